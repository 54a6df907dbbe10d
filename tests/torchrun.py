"""Real ``torchrun`` for the distributed tests: 2 gloo processes on this machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def two_ranks(script: Path, *args: str, timeout: int = 400) -> None:
    """Run ``script`` under ``torchrun --nproc_per_node 2`` (one thread each), from its folder;
    fails the test with the end of stderr when a rank fails."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         *args], env=env, cwd=script.parent, capture_output=True, text=True, timeout=timeout)
    assert launched.returncode == 0, launched.stderr[-3000:]
