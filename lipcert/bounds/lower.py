"""Rigorous lower bounds: the yardsticks every upper bound is tested against (math.md section 8.3).

* **Pattern bound**: max over slope patterns D_k (entries alpha_kj or beta_kj) of
  ||W_L D_{L-1} ... D_1 W_1||_2, found by block-coordinate ascent with random restarts.  The
  linear net with a fixed pattern lies in the slope class (and, for ReLU with free biases, is
  realised by the network), so every method here must be at least this.
* **Jacobian bound**: max of ||J(x)||_2 over random inputs plus gradient ascent, with the
  network's own biases and activations: a lower bound on this network's own constant.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..batch import check_count
from ..memory import check_budget
from ..graph import AnyNetwork, GraphNetwork
from ..network import Network, require_network
from .ascent import ascend, late, start_points
from .graph_lower import graph_jacobian_bound, graph_pattern_bound
from .workspace import lower_bytes


@dataclass(frozen=True)
class LowerBound:
    """A certified lower bound on the Lipschitz constant.

    ``value`` = max(``pattern``, ``jacobian``).  ``pattern`` bounds the supremum over the
    slope class (what every upper bound in lipcert bounds); ``jacobian`` bounds this network
    with its own biases.  ``point`` is the input where the best Jacobian norm was found.
    ``status`` says whether the search stopped at its time budget (the value is still a lower bound).
    """

    value: float
    pattern: float
    jacobian: float
    seconds: float
    point: torch.Tensor | None = field(default=None, repr=False)
    status: str = "ok"

    def __float__(self) -> float:
        return self.value


def _top_singular(mat: torch.Tensor) -> tuple[torch.Tensor, float, torch.Tensor]:
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    return u[:, 0], float(s[0]), vh[0]


def pattern_bound(net: Network, *, restarts: int = 8, sweeps: int = 30,
                  generator: torch.Generator | None = None, deadline: float | None = None) -> float:
    """Block-coordinate ascent over slope patterns (math.md 8.3b).

    For layer k, with u, v the top singular vectors of the current product, set
    d_i = beta_i if (A^T u)_i (B v)_i > 0 else alpha_i, where A is the product left of D_k and
    B the product right of it.  Restart 0 starts from all-beta, the others at random.  After the
    first sweep, the search stops at ``deadline`` (a ``time.perf_counter()`` value).
    """
    net = require_network(net, "pattern_bound")  # dense weight matrices (operator layers densified)
    ws = list(net.weights)
    if len(ws) == 1:
        return float(torch.linalg.matrix_norm(ws[0], ord=2))
    lo = list(net.alphas)
    hi = list(net.betas)
    best = 0.0
    for rep in range(restarts):
        if rep == 0:
            ds = [h.clone() for h in hi]
        else:
            ds = [torch.where(torch.rand(len(h), generator=generator, dtype=torch.float64) < 0.5, l, h)
                  for l, h in zip(lo, hi)]
        value = 0.0
        for _ in range(sweeps):
            # suffixes[k] = W_L D_{L-1} ... W_{k+2} D_{k+1} W_{k+1}  (left of D_k, 0-based hidden index k)
            suffixes: list[torch.Tensor] = [ws[-1]] * (len(ws) - 1)
            left = ws[-1]
            for k in range(len(ws) - 2, -1, -1):
                suffixes[k] = left
                left = (left * ds[k][None, :]) @ ws[k]
            changed = False
            right = ws[0]
            for k in range(len(ws) - 1):
                u, _, v = _top_singular((suffixes[k] * ds[k][None, :]) @ right)
                score = (suffixes[k].T @ u) * (right @ v)
                new = torch.where(score > 0, hi[k], lo[k])
                changed |= not torch.equal(new, ds[k])
                ds[k] = new
                right = ws[k + 1] @ (ds[k][:, None] * right)
            value = float(torch.linalg.matrix_norm(right, ord=2))
            if not changed or late(deadline):
                break
        best = max(best, value)
        if late(deadline):
            break
    return best


def jacobian_bound(net: Network, *, samples: int = 256, steps: int = 50, scale: float | None = None,
                   generator: torch.Generator | None = None, deadline: float | None = None
                   ) -> tuple[float, torch.Tensor | None]:
    """max ||J(x)||_2 over random inputs, refined by gradient ascent (useful for smooth activations) until
    ``deadline`` (a ``time.perf_counter()`` value; the random inputs are always evaluated)."""
    net = require_network(net, "jacobian_bound")  # dense weight matrices (operator layers densified)
    if any(a.fn is None or a.derivative is None for a in net.activations):
        return 0.0, None
    x = start_points(net.input_dim, samples, net.input_range, scale, generator)

    def norms(z: torch.Tensor) -> torch.Tensor:
        slopes = []
        h = z @ net.weights[0].T + net.biases[0]
        for k, act in enumerate(net.activations):
            slopes.append(act.derivative(h))  # type: ignore[misc]
            h = act(h) @ net.weights[k + 1].T + net.biases[k + 1]
        jac = net.weights[-1].expand(z.shape[0], -1, -1)  # (B, K, n_{L-1}), built from the output side
        for k in range(len(slopes) - 1, -1, -1):
            jac = (jac * slopes[k][:, None, :]) @ net.weights[k]
        return torch.linalg.matrix_norm(jac, ord=2)

    with torch.no_grad():
        vals = norms(x)
    return ascend(norms, x, vals, steps=steps, scale=scale, deadline=deadline, input_range=net.input_range)


def lower_bound(net: AnyNetwork, *, restarts: int = 8, samples: int = 256, seed: int = 0,
                seconds: float | None = None, max_bytes: float | None = None) -> LowerBound:
    """The larger of the pattern bound and the sampled Jacobian bound (math.md 8.3).

    ``net`` must be a Network or a GraphNetwork (:mod:`.graph_lower`; :func:`lipcert.lower_bound` loads
    paths and torch modules).
    ``seconds`` is a time budget (half for the pattern search, the rest for the Jacobian ascent;
    each does at least one pass); ``max_bytes`` limits the estimated working memory
    (:func:`~lipcert.bounds.workspace.lower_bytes`; MemoryBudgetError above it).
    """
    if not isinstance(net, GraphNetwork):
        net = require_network(net, "lower_bound")
    restarts, samples = check_count("restarts", restarts, 0), check_count("samples", samples, 0)
    seed = check_count("seed", seed, 0)
    widths = ([w for chain in net.chains() for w in chain.widths] + list(net.widths) if isinstance(net, GraphNetwork)
              else net.widths)
    check_budget(f"the lower bound on widths {list(widths)}", lower_bytes(net), max_bytes)
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    half, end = (None, None) if seconds is None else (start + seconds / 2, start + seconds)
    if isinstance(net, GraphNetwork):
        pattern = graph_pattern_bound(net, restarts=restarts, generator=gen, deadline=half)
        jac, point = graph_jacobian_bound(net, samples=samples, generator=gen, deadline=end)
    else:
        pattern = pattern_bound(net, restarts=restarts, generator=gen, deadline=half)
        jac, point = jacobian_bound(net, samples=samples, generator=gen, deadline=end)
    took = time.perf_counter() - start
    status = "ok" if end is None or not late(end) else f"stopped at its time budget of {seconds:g} s"
    return LowerBound(max(pattern, jac), pattern, jac, took, point, status)
