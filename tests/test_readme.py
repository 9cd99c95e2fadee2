"""The README's Python example runs as written (on a shared model) and names only real API."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import lipcert

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_example_runs(shared_data: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    code = python_blocks()[0]
    model = shared_data / "models" / "eran_mnist_6_100" / "mnist_6_100_nat.onnx"
    monkeypatch.setenv("LIPCERT_DATA", str(shared_data / "datasets"))
    exec(compile(code.replace('"mnist_6_100_nat.onnx"', repr(str(model))), "README.md", "exec"), {})
    lines = capsys.readouterr().out.strip().splitlines()
    value, rule, lower = lines[0].split()
    assert 0 < float(lower) <= float(value)
    assert rule.startswith(("sn(", "gc(", "shift(", "gcs(", "naive"))
    clean, *certified = re.findall(r"[0-9.]+(?:e-?\d+)?", lines[1])
    assert float(clean) == pytest.approx(0.96)  # the manifest's measured accuracy on the first 1000 images
    assert np.all(np.diff([float(c) for c in certified]) <= 0)


def test_readme_cli_commands_exist() -> None:
    from lipcert.cli import COMMANDS

    named = set(re.findall(r"^lipcert (\w+)", README.read_text(), flags=re.M))
    assert named and named <= set(COMMANDS)
    for method in re.findall(r"^\| `([a-z0-9-]+)`", README.read_text(), flags=re.M):
        assert method in lipcert.bounds.METHODS
