"""Dataset image files that are hostile or broken (issue "hardening", finding 7): the one image loader checks the
size from the header before decoding or scaling, and every failure is a ValueError naming the file."""

from __future__ import annotations

import pytest
from PIL import Image

from promptweave.prompt_modules.core.data import (
    MAX_IMAGE_ASPECT,
    image_file_size,
    load_image,
    load_mask,
)


def _png(path, width, height):
    Image.new("RGB", (width, height), (200, 10, 10)).save(path)
    return path


@pytest.mark.parametrize(("width", "height", "why"), [(100_000, 1, "longer than"), (1, 5_000, "longer than"),
                                                       (9_000, 8_000, "megapixels")])
def test_strips_and_huge_images_are_refused_from_the_header(tmp_path, width, height, why):
    path = _png(tmp_path / "strip.png", width, height)
    for read in (lambda: load_image(path, 224), lambda: load_image(path), lambda: image_file_size(path),
                 lambda: load_mask(path)):
        with pytest.raises(ValueError, match=f"strip.png: it is {width}x{height} pixels.*{why}"):
            read()


def test_the_bounds_leave_ordinary_photos_alone(tmp_path):
    path = _png(tmp_path / "wide.png", 64 * MAX_IMAGE_ASPECT, 64)
    assert load_image(path, 32).shape == (3, 32, 32) and image_file_size(path) == (64 * MAX_IMAGE_ASPECT, 64)


@pytest.mark.parametrize("kind", ["truncated", "garbage", "folder", "empty"])
def test_broken_files_are_errors_naming_them(tmp_path, kind):
    path = tmp_path / "broken.png"
    if kind == "truncated":
        _png(path, 64, 64)
        path.write_bytes(path.read_bytes()[:60])
    elif kind == "garbage":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    elif kind == "folder":
        path.mkdir()
    else:
        path.write_bytes(b"")
    readers = [lambda: load_image(path, 32), lambda: load_mask(path)]
    if kind != "truncated":  # its header is whole: the size is readable, decoding is not
        readers.append(lambda: image_file_size(path))
    for read in readers:
        with pytest.raises(ValueError, match="broken.png"):
            read()


def test_a_caption_that_is_not_utf8_is_an_error_naming_the_file(tmp_path):
    from promptweave.prompt_modules.core.data import read_text_file
    from promptweave.prompt_modules.dual_prompt.data import FolderSource

    _png(tmp_path / "a.png", 32, 32)
    _png(tmp_path / "b.png", 32, 32)
    (tmp_path / "a.txt").write_text("a red star", encoding="utf-8")
    (tmp_path / "b.txt").write_bytes("une étoile".encode("latin-1"))
    with pytest.raises(ValueError, match=r"caption .*b\.txt is not UTF-8 text .* at byte 4\): save it as UTF-8"):
        FolderSource(tmp_path)
    with pytest.raises(ValueError, match=r"cannot read the expression file .*missing\.txt"):
        read_text_file(tmp_path / "missing.txt", "expression file")
