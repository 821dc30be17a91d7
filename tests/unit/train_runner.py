"""Runs several ``python -m promptweave.train`` command lines, one after the other, in one launch: the distributed
tests start ``torchrun`` once for all the methods they train (``python -m torch.distributed.run --nproc_per_node 2
train_runner.py '[["ipl", ...], ...]'``), so each process's start-up (imports, the process group) is paid once."""

from __future__ import annotations

import json
import sys

from promptweave.train import main

if __name__ == "__main__":
    for argv in json.loads(sys.argv[1]):
        main(argv)
