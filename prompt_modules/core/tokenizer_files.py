"""The standard CLIP BPE tokenizer as Hugging Face ``vocab.json`` + ``merges.txt``, built offline.

open_clip bundles the CLIP merge list (``bpe_simple_vocab_16e6.txt.gz``); the vocabulary is derived from it
exactly as CLIP does (256 byte symbols, the same with an end-of-word mark, one entry per merge, then the two
special tokens), so ``transformers.CLIPTokenizer`` loaded from these files gives the same ids as open_clip.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

from open_clip.tokenizer import bytes_to_unicode, default_bpe

from .artifacts import atomic_write_bytes

START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
NUM_MERGES = 49152 - 256 - 2  # CLIP keeps the first 48894 merges of the file


def clip_merges(bpe_path: str | None = None) -> list[tuple[str, str]]:
    """The CLIP BPE merges, in rank order."""
    lines = gzip.open(bpe_path or default_bpe()).read().decode("utf-8").split("\n")
    pairs = [line.split() for line in lines[1 : NUM_MERGES + 1]]  # line 0 is a version comment
    return [(a, b) for a, b in pairs]


def clip_vocab(merges: list[tuple[str, str]] | None = None) -> dict[str, int]:
    """Token -> id for the 49408-entry CLIP vocabulary."""
    merges = clip_merges() if merges is None else merges
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [START_TOKEN, END_TOKEN]
    return {token: i for i, token in enumerate(tokens)}


def write_clip_tokenizer_files(folder: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` (Hugging Face CLIP format) into ``folder``; returns both paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = clip_merges()
    vocab = clip_vocab(merges)
    vocab_path = atomic_write_bytes(folder / "vocab.json", json.dumps(vocab, ensure_ascii=False).encode("utf-8"))
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    merges_path = atomic_write_bytes(folder / "merges.txt", merges_text.encode("utf-8"))
    return vocab_path, merges_path
