"""``python -m promptweave.train`` under ``torchrun`` on CPU with gloo (issue "training beyond one machine").

Two processes at global batch B must train the parameters one process trains at batch B: both see the same
batches in the same order and the gradients of equal halves are averaged. The only difference is the order of
floating-point sums (two half-batch means added, against one mean), about 1e-7 per step, which AdamW carries
through a few steps: 1e-5 absolute is the tolerance. A two-process run killed mid-training resumes on one process
to that same result.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from promptweave.prompt_modules.core.artifacts import read_metadata, read_safetensors
from promptweave.prompt_modules.core.distributed import DataParallel

pytestmark = pytest.mark.slow

PACKAGE_PARENT = Path(__file__).resolve().parents[3]
COMMON = ["--vlm", "preset:tiny", "--batch-size", "8", "--seed", "3"]


def _train(
    tmp_path: Path, processes: int, *args: str, wait: bool = True, method: str = "rpp"
) -> subprocess.Popen | str:
    """Run the CLI in ``processes`` processes; its output (or, with ``wait=False``, the running launcher)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "promptweave.train"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
        "-m", "promptweave.train"]
    process = subprocess.Popen([*launcher, method, *COMMON, *args], cwd=PACKAGE_PARENT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    if not wait:
        return process
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    return output


def _max_difference(a: Path, b: Path) -> float:
    ta, _ = read_safetensors(a)
    tb, _ = read_safetensors(b)
    assert ta.keys() == tb.keys()
    return max(float((ta[k].float() - tb[k].float()).abs().max()) for k in ta)


def test_the_part_of_each_rank_and_refused_batch_sizes():
    parts = [DataParallel(rank, 4).part(8) for rank in range(4)]
    assert parts == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]
    with pytest.raises(ValueError, match="batch size 6 is not divisible by the 4 processes"):
        DataParallel(0, 4).part(6)
    assert DataParallel().part(5) == slice(0, 5)


@pytest.mark.parametrize("method", ["rpp", "dcar"])
def test_two_processes_train_what_one_process_trains(tmp_path, method):
    """DCAR's contrastive loss couples the samples of a batch: each rank encodes its part and the features are
    gathered (differentiably), so both ranks compute the whole batch's loss."""
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    _train(tmp_path, 1, "--steps", "4", "--out", str(one), method=method)
    _train(tmp_path, 2, "--steps", "4", "--out", str(two), "--log-csv", str(tmp_path / "log.csv"), method=method)
    assert _max_difference(one, two) < 1e-5
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 1 + 4  # rank 0 alone logs, once per step
    if method == "rpp":
        info = json.loads(read_metadata(two)["promptweave.info"])
        assert info["processes"] == 2 and info["steps"] == 4


def test_a_killed_two_process_run_resumes_on_one_process(tmp_path):
    steps = "24"
    full, resumed, state = tmp_path / "full.safetensors", tmp_path / "resumed.safetensors", tmp_path / "run.state"
    _train(tmp_path, 1, "--steps", steps, "--out", str(full))
    process = _train(tmp_path, 2, "--steps", steps, "--out", str(resumed), "--checkpoint", str(state),
                     "--checkpoint-every", "1", wait=False)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None:
            if state.is_file() and int(json.loads(read_metadata(state)["promptweave.step"])) >= 3:
                break
            time.sleep(0.05)
    finally:  # SIGKILL the launcher and both ranks (torchrun starts its workers in their own sessions)
        family = [process.pid, *(child.pid for child in psutil.Process(process.pid).children(recursive=True))]
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait(timeout=60)
    killed_at = int(json.loads(read_metadata(state)["promptweave.step"]))
    assert 3 <= killed_at < int(steps) and not resumed.exists(), "the run was not stopped mid-training"
    output = _train(tmp_path, 1, "--steps", steps, "--out", str(resumed), "--checkpoint", str(state))
    assert f"step {killed_at + 1}/{steps} " in output and "step 1/" not in output, output  # went on
    assert _max_difference(full, resumed) < 1e-5
