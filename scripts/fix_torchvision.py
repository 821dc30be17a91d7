"""Make the registry's torchvision importable next to a CPU-only torch build (this machine kind only).

torchvision 0.28.0 from the registry is a CUDA build. With CPU torch its compiled ops fail to load and
``import torchvision`` dies in ``_meta_registrations.py`` on ``register_fake("torchvision::nms")``
because the operator schema was never defined. Declaring the ``nms``/``qnms`` schemas first (only when the
compiled ops are missing) makes the import succeed; the C++ kernels themselves still fail, and only if called.
ComfyUI needs ``import torchvision`` to work; PromptWeave never calls those kernels.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

ANCHORS = ('@torch.library.register_fake("torchvision::nms")', '@register_fake("torchvision::nms")')
MARKER = "# promptweave-setup: declare torchvision op schemas when the compiled ops are missing"
PATCH = f"""{MARKER}
import torchvision.extension as _pw_tv_extension
if not _pw_tv_extension._has_ops():
    _pw_tv_lib = torch.library.Library("torchvision", "DEF")
    _pw_tv_lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _pw_tv_lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
"""


def main() -> int:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        print("torchvision is not installed; nothing to fix", file=sys.stderr)
        return 0
    path = pathlib.Path(spec.origin).parent / "_meta_registrations.py"
    text = path.read_text()
    if MARKER in text:
        return 0
    anchor = next((a for a in ANCHORS if a in text), None)
    if anchor is None:
        print(f"{path}: no nms registration found; leaving torchvision as it is", file=sys.stderr)
        return 0
    path.write_text(text.replace(anchor, PATCH + "\n\n" + anchor, 1))
    print(f"patched {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
