"""benchmarks/zoo/train_residual.py --library lipcert: its margin constants bound the model's Jacobians and carry gradients."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _load_script():
    pytest.importorskip("orthogonium")
    sys.path.insert(0, str(REPO / "benchmarks" / "zoo"))  # the script imports train.py beside it
    try:
        spec = importlib.util.spec_from_file_location("zoo_train_residual", REPO / "benchmarks" / "zoo" /
                                                      "train_residual.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "benchmarks" / "zoo"))
    return module


def test_margin_bound_is_above_every_sampled_jacobian_and_differentiable(seed: int) -> None:
    script = _load_script()
    torch.manual_seed(seed)
    model = script.build("lipcert", depth=2, width=8).double()
    for block in model:
        if isinstance(block, script.MaxMinBlock):
            with torch.no_grad():
                block.outer.weight.mul_(3.0)  # blocks far from 1-Lipschitz
    bound = script.MarginBound(model, every=1)
    pairwise = bound()
    x = torch.rand(64, 1, 28, 28, dtype=torch.float64)
    worst = torch.zeros(10, 10, dtype=torch.float64)
    for xi in x:
        jac = torch.autograd.functional.jacobian(model, xi[None]).reshape(10, -1)
        worst = torch.maximum(worst, torch.cdist(jac, jac))
    assert bool((worst <= pairwise.double() * (1 + 1e-5)).all()), seed
    assert float(worst.max()) > 0.05 * float(pairwise.detach().max()), seed  # the bound is not vacuous
    pairwise.sum().backward()
    assert all(float(b.inner.weight.grad.abs().sum()) > 0 and float(b.outer.weight.grad.abs().sum()) > 0
               for b in model if isinstance(b, script.MaxMinBlock)), seed
