"""The Jacobian-norm ascent shared by the lower bounds of chains and of graphs (lower.py, graph_lower.py).

Every value it returns is ||J(x)||_2 at a point x actually evaluated, so a lower bound on Lip_2 whatever
the ascent does; the ascent only looks for larger ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def late(deadline: float | None) -> bool:
    """Whether ``deadline`` (a ``time.perf_counter()`` value, None for none) has passed."""
    return deadline is not None and time.perf_counter() > deadline


def start_points(n0: int, samples: int, input_range: tuple[float, float] | None, scale: float | None,
                 generator: torch.Generator | None) -> torch.Tensor:
    """``samples`` random inputs (samples, n0): uniform on the input range, else N(0, scale^2)."""
    if input_range is not None:
        lo, hi = input_range
        return lo + (hi - lo) * torch.rand(samples, n0, generator=generator, dtype=torch.float64)
    return torch.randn(samples, n0, generator=generator, dtype=torch.float64) * (scale or 1.0)


def ascend(norms: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, vals: torch.Tensor, *, steps: int,
           scale: float | None, deadline: float | None, input_range: tuple[float, float] | None
           ) -> tuple[float, torch.Tensor]:
    """The largest ||J|| seen: ``vals`` = norms(x) at the start points, then Adam ascent on the 8 best of them
    (clamped to ``input_range``) for ``steps`` steps or until ``deadline``; returns (value, its input)."""
    best_val, best_x = float(vals.max()), x[int(vals.argmax())]
    z = x[torch.topk(vals, min(8, x.shape[0])).indices].clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.05 * (scale or 1.0))
    for _ in range(steps):
        if late(deadline):
            break
        opt.zero_grad()
        out = norms(z)
        i = int(out.detach().argmax())
        if float(out[i].detach()) > best_val:
            best_val, best_x = float(out[i].detach()), z[i].detach().clone()
        if not out.requires_grad:
            break
        (-out.sum()).backward()
        opt.step()
        if input_range is not None:
            with torch.no_grad():
                z.clamp_(*input_range)
    return best_val, best_x
