"""Rigorous lower bounds on the Lipschitz constant of network graphs (as bounds/lower.py for chains).

* **Pattern bound**: every activation site replaced by a fixed diagonal slope pattern D (entries
  alpha_j or beta_j) makes the graph affine, x -> J_D x + const, and J_D lies in the slope class that
  every upper bound covers, so ||J_D||_2 is a lower bound of them all.  Block-coordinate ascent: u^T J_D v
  is linear in the pattern of one site (a site is evaluated once; the skip paths that avoid it are a
  constant), so with u, v the top singular vectors the best pattern of site k is beta_j where
  (A_k^T u)_j (B_k v)_j > 0, A_k^T u the gradient of u^T f_D with respect to the site's output and B_k v
  its pre-activation on input v (both from one forward and one backward pass of the linear graph).
  An L2-norm pooling stage (decisions 43) is linearized as y_w = r_w . D_w z with one unit vector r_w per
  window (its Jacobian where the window is nonzero is of this form): ||J|| <= its exact constant for every
  such choice, so the linear graph stays in the class every upper bound covers, and the best r_w for
  given u, v is sign(g_w) D_w (B v) / ||D_w (B v)|| (g the gradient at the pooling's output).  An L2-norm
  residual (decisions 44) is linearized likewise as z_i = r_i . (x_i, g_i), ||r_i|| <= 1/sqrt(2).
* **Jacobian bound**: max ||J(x)||_2 of the graph's own float64 forward pass (torch autograd) over random
  inputs, refined by gradient ascent: a lower bound on this network's constant.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..activations import Activation
from ..graph import Cut, GraphNetwork
from ..norm_pool import NormPool
from .ascent import ascend, late, start_points


def _sites(net: GraphNetwork) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(alpha, beta) of every activation site in evaluation order."""
    found: list[tuple[torch.Tensor, torch.Tensor]] = []

    def record(site: int, act: Activation, alpha: torch.Tensor, beta: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        found.append((alpha, beta))
        return z

    with torch.no_grad():
        net.forward_flat(torch.zeros(1, net.input_dim, dtype=torch.float64), record)
    return found


def _pieces(stage: Cut, z: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """What a cut stage's linearization weighs, (B, n_out, K): a pooling's D_w z, an L2-norm residual's (x_i, g_i)."""
    if isinstance(stage, NormPool):
        return stage.windows(z)
    assert out is not None
    return torch.stack([z, out], dim=-1)


def _radius(stage: Cut) -> float:
    """The largest norm of one output's linearization vector: 1 for a pooling, 1/sqrt(2) for an L2-norm residual."""
    return 1.0 if isinstance(stage, NormPool) else 0.5**0.5


def _linear_cut(directions: list[torch.Tensor]) -> Callable[[int, Cut, torch.Tensor, torch.Tensor | None],
                                                              torch.Tensor]:
    def cut(number: int, stage: Cut, z: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        return (_pieces(stage, z, out) * directions[number]).sum(-1)
    return cut


def pattern_jacobian(net: GraphNetwork, pattern: list[torch.Tensor],
                     directions: list[torch.Tensor] | None = None) -> torch.Tensor:
    """J_D (n_out, n_0): the linear part of the graph with every site's slopes fixed to ``pattern`` and every
    cut stage linearized with ``directions`` (one (n_out, K) array per pooling or L2-norm residual)."""
    def linear(site: int, act: Activation, alpha: torch.Tensor, beta: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return z * pattern[site]

    with torch.no_grad():
        eye = torch.eye(net.input_dim, dtype=torch.float64)
        out = net.forward_flat(torch.cat([eye, torch.zeros(1, net.input_dim, dtype=torch.float64)]), linear,
                               None if directions is None else _linear_cut(directions))
    return (out[:-1] - out[-1:]).T


def _scores(net: GraphNetwork, pattern: list[torch.Tensor], directions: list[torch.Tensor], u: torch.Tensor,
            v: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(A_k^T u) * (B_k v) for every site k of the linear graph f_D, and the best directions of every cut stage."""
    pre: list[torch.Tensor] = []
    taps: list[torch.Tensor] = []
    windows: list[tuple[torch.Tensor, float]] = []
    pool_taps: list[torch.Tensor] = []

    def linear(site: int, act: Activation, alpha: torch.Tensor, beta: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        tap = torch.zeros_like(z, requires_grad=True)
        pre.append(z.detach())
        taps.append(tap)
        return z * pattern[site] + tap

    def pool(number: int, stage: Cut, z: torch.Tensor, branch: torch.Tensor | None) -> torch.Tensor:
        win = _pieces(stage, z, branch)
        out = (win * directions[number]).sum(-1)
        tap = torch.zeros_like(out, requires_grad=True)
        windows.append((win.detach(), _radius(stage)))
        pool_taps.append(tap)
        return out + tap

    x = torch.stack([v, torch.zeros_like(v)])
    out = net.forward_flat(x, linear, pool)
    grads = torch.autograd.grad((out[0] - out[1]) @ u, taps + pool_taps, allow_unused=True)
    grads = tuple(torch.zeros(1) if g is None else g for g in grads)
    best = []
    for g, (win, radius), old in zip(grads[len(taps):], windows, directions):
        b = win[0] - win[1]
        norm = b.norm(dim=-1, keepdim=True) / radius
        best.append(torch.where((norm > 0) & (g[0] != 0)[:, None], torch.sign(g[0])[:, None] * b / norm.clamp_min(1e-300),
                                old))
    return [g[0] * (z[0] - z[1]) for g, z in zip(grads, pre)], best


def _start_directions(net: GraphNetwork, rep: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    """Vectors of the largest norm on every cut stage's pieces: nonnegative (restart 0: a pooling's sqrt(P_w),
    every window's gradient direction for a nonnegative input) or random."""
    out = []
    for stage in net.cuts():
        support = stage.weight > 0 if isinstance(stage, NormPool) else torch.ones(stage.output_dim, 2, dtype=torch.bool)
        d = (stage.weight.sqrt() if isinstance(stage, NormPool) else support.double()) if rep == 0 else (
            torch.randn(support.shape, generator=generator, dtype=torch.float64) * support)
        out.append(d / d.norm(dim=-1, keepdim=True).clamp_min(1e-300) * _radius(stage))
    return out


def graph_pattern_bound(net: GraphNetwork, *, restarts: int = 8, sweeps: int = 30,
                        generator: torch.Generator | None = None, deadline: float | None = None) -> float:
    """max ||J_D||_2 over slope patterns D by block-coordinate ascent; restart 0 is all-beta, the others random.

    Stops at ``deadline`` (a ``time.perf_counter()`` value) once one pattern has been evaluated."""
    sites = _sites(net)
    pools = len(net.cuts())
    best = 0.0
    for rep in range(max(restarts, 1)):
        pattern = [b.clone() if rep == 0 else
                   torch.where(torch.rand(len(b), generator=generator, dtype=torch.float64) < 0.5, a, b)
                   for a, b in sites]
        directions = _start_directions(net, rep, generator)
        for _ in range(sweeps):
            changed = False
            for k in range(len(sites) + pools):
                jac = pattern_jacobian(net, pattern, directions)
                u_mat, s, vh = torch.linalg.svd(jac, full_matrices=False)
                best = max(best, float(s[0]))
                if late(deadline):  # each site costs a pass of n_0 inputs: stop inside a sweep too
                    return best
                scores, best_directions = _scores(net, pattern, directions, u_mat[:, 0], vh[0])
                if k >= len(sites):  # a pooling: its best unit vectors for these u, v
                    new = best_directions[k - len(sites)]
                    changed |= not torch.allclose(new, directions[k - len(sites)], rtol=1e-12, atol=1e-15)
                    directions[k - len(sites)] = new
                    continue
                alpha, beta = sites[k]
                new = torch.where(scores[k] > 0, beta, alpha)
                changed |= not torch.equal(new, pattern[k])
                pattern[k] = new
            if not (sites or pools) or not changed or late(deadline):
                break
        best = max(best, float(torch.linalg.matrix_norm(pattern_jacobian(net, pattern, directions), ord=2)))
        if late(deadline):
            break
    return best


def graph_jacobian_bound(net: GraphNetwork, *, samples: int = 256, steps: int = 50, scale: float | None = None,
                         generator: torch.Generator | None = None, deadline: float | None = None
                         ) -> tuple[float, torch.Tensor | None]:
    """max ||J(x)||_2 over random inputs of the graph's forward pass, refined by gradient ascent."""
    if any(net_act.fn is None for chain in net.chains() for net_act in chain.activations) or any(
            a is not None and a.fn is None for a in net.activations):
        return 0.0, None
    x = start_points(net.input_dim, samples, net.input_range, scale, generator)

    def norms(z: torch.Tensor, create_graph: bool = True) -> torch.Tensor:
        """||J(z_i)||_2 per input: row k of every input's Jacobian from one backward pass of sum_i f_k(z_i)."""
        z = z if z.requires_grad else z.clone().requires_grad_(True)
        out = net.forward_flat(z)
        rows = [torch.autograd.grad(out[:, k].sum(), z, retain_graph=True, create_graph=create_graph)[0]
                for k in range(out.shape[1])]
        return torch.linalg.matrix_norm(torch.stack(rows, dim=1), ord=2)

    vals = norms(x, create_graph=False).detach()
    return ascend(norms, x, vals, steps=steps, scale=scale, deadline=deadline, input_range=net.input_range)
