"""The shipped type annotations hold: mypy passes on lipcert, lipcert.adapters and lipcert.datasets.

mypy runs inside the suite so that a type error fails the same run (and the same closing line)
as a failing test.  Its configuration is pyproject's ``[tool.mypy]``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mypy_passes_on_the_package_and_its_mapped_subpackages() -> None:
    if importlib.util.find_spec("mypy") is None:
        message = "needs mypy, from the test extra: pip install -e '.[test]'"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    for sub in ("adapters", "datasets"):  # how mypy finds the folders setuptools maps into lipcert
        assert (REPO / ".layout" / "lipcert" / sub / "__init__.py").is_file(), f".layout/lipcert/{sub} is broken"
    run = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, f"mypy failed:\n{run.stdout}{run.stderr}"
    assert run.stdout.startswith("Success: no issues found")
