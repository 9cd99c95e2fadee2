"""What every benchmark states about where it ran: the machine line and the shared data folder."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

import lipcert

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
"""Default folder of the real data sets and third-party models (../shared/data beside the repository)."""


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, ``"a / b / c"`` (``"n/a"`` where the OS has none)."""
    if not hasattr(os, "getloadavg"):
        return "n/a"
    return " / ".join(f"{v:.1f}" for v in os.getloadavg())


def machine(when: str = "at the end") -> str:
    """One line naming the machine, the software and the load average now, said to be ``when``.

    Timings are only comparable between runs whose load averages are both near zero; a load above
    the core count means other jobs shared the cores.
    """
    cpu = platform.processor() or platform.machine()
    return (f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), lipcert "
            f"{lipcert.__version__}; load average {load_average()} {when}")


def peak_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss), in MB: python, torch and lipcert included."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(script: str | Path, spec: dict[str, Any]) -> dict[str, Any]:
    """``python script --child JSON(spec)`` in a fresh process (so that its peak memory is the case's own): the
    JSON on the last line of its output, or ``{**spec, "failed": the last line of its error}``."""
    proc = subprocess.run([sys.executable, str(script), "--child", json.dumps(spec)], capture_output=True, text=True,
                          cwd=Path(script).parent)
    if proc.returncode != 0:
        return {**spec, "failed": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])
