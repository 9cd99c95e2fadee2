"""``lipcert.attack``: a PGD attack on a :class:`~lipcert.Network`, the empirical side of a certificate.

The attack gives an upper bound on robust accuracy (an input it breaks is not robust) and a
soundness check: no input may be both certified at eps and broken at eps.  Every success is
verified independently of the attack: the adversarial point lies in the eps-ball (and in the
input range when one is known) and the float64 prediction (argmax of the logits) differs from the label.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .certification import Certification
from .errors import InvalidArgumentError, InvalidNormError, ShapeMismatchError
from .graph import AnyNetwork, GraphNetwork
from .loading import as_model
from .network import Network
from .norms import check_eps, parse_norm

_SHRINK = 1 - 1e-9  # project slightly inside the ball so the float64 check never fails on rounding


@dataclass(frozen=True, eq=False)
class AttackResult:
    """Outcome of :func:`attack` on N inputs.

    Attributes
    ----------
    norm : str
        ``"2"`` or ``"inf"``.
    eps : ndarray of float64, shape (N,)
        Radius attacked for each input.
    success : ndarray of bool, shape (N,)
        True when a verified adversarial point was found (a misclassified input counts as broken
        by itself).
    adversarial : ndarray of float64, shape (N, d), or None
        The verified adversarial point (flattened), or the point of lowest margin found when the
        attack failed; None for results read back from a run's attack records.
    margin : ndarray of float64, shape (N,)
        Float64 margin f_y - max_{j != y} f_j at ``adversarial`` (negative where ``success``, up
        to exact ties, which count as a success only when the argmax is not y).
    steps, restarts : int
        PGD steps per restart and number of restarts.
    seconds : float
        Wall time.
    """

    norm: str
    eps: np.ndarray
    success: np.ndarray
    adversarial: np.ndarray | None
    margin: np.ndarray
    steps: int
    restarts: int
    seconds: float

    def __repr__(self) -> str:
        e = np.unique(self.eps)
        eps = f"{e[0]:.4g}" if e.size == 1 else f"{e.min():.4g}..{e.max():.4g}"
        return (f"AttackResult(norm={self.norm!r}, eps={eps}, n={self.success.size}, "
                f"robust_accuracy<={self.robust_accuracy:.4f}, seconds={self.seconds:.3g})")

    @property
    def robust_accuracy(self) -> float:
        """Upper bound on robust accuracy: the share of inputs the attack did not break."""
        return float(1 - self.success.mean()) if self.success.size else 0.0


def logits64(net: AnyNetwork, flat: torch.Tensor) -> torch.Tensor:
    """Float64 logits of a flat batch."""
    with torch.no_grad():
        return torch.as_tensor(net(flat.to(torch.float64).reshape(-1, *net.input_shape)))


def _chain_logits(net: Network, dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    """The chain's forward pass with its weights cast once to ``dtype`` (operator layers apply themselves)."""
    ops = list(net.operators) or [None] * net.depth
    weights = [w.to(dtype) if op is None else op for w, op in zip(net.weights, ops)]
    biases = [b.to(dtype) for b in net.biases]

    def logits(z: torch.Tensor) -> torch.Tensor:
        for k, (w, b) in enumerate(zip(weights, biases)):
            z = (z @ w.T if isinstance(w, torch.Tensor) else w.matmat(z)) + b
            if k < len(net.activations):
                z = net.activations[k](z)
        return z

    return logits


def _margin(f: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    fy = f.gather(1, labels[:, None])[:, 0]
    others = f.masked_fill(torch.nn.functional.one_hot(labels, f.shape[1]).bool(), -torch.inf)
    return fy - others.max(dim=1).values


def _box(flat: torch.Tensor, input_range: tuple[float, float] | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-coordinate clipping box: the input range, widened where an input lies outside it."""
    if input_range is None:
        return None
    lo, hi = float(input_range[0]), float(input_range[1])
    return torch.clamp(flat, max=lo), torch.clamp(flat, min=hi)


def _project(delta: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "inf":
        return torch.maximum(torch.minimum(delta, eps[:, None]), -eps[:, None])
    size = delta.norm(dim=1)
    factor = torch.where(size > eps, eps / torch.clamp(size, min=1e-300), torch.ones_like(size))
    return delta * factor[:, None]


def _clip(x0: torch.Tensor, delta: torch.Tensor, box: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    point = x0 + delta
    return point if box is None else torch.maximum(torch.minimum(point, box[1]), box[0])


def verify(net: AnyNetwork, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor,
           x_adv: np.ndarray | torch.Tensor, norm: str | float, eps: float | np.ndarray,
           input_range: tuple[float, float] | None = None) -> np.ndarray:
    """Mask of verified adversarial points: inside the eps-ball and the box, float64 argmax != label."""
    norm_name = parse_norm(norm)
    x0 = torch.as_tensor(np.asarray(x), dtype=torch.float64).reshape(len(y), -1)
    xa = torch.as_tensor(np.asarray(x_adv), dtype=torch.float64).reshape(x0.shape)
    e = torch.as_tensor(np.broadcast_to(check_eps(eps), (x0.shape[0],)).copy())
    d = xa - x0
    size = d.abs().max(dim=1).values if norm_name == "inf" else d.norm(dim=1)
    ok = size <= e
    box = _box(x0, input_range)
    if box is not None:
        ok &= ((xa >= box[0]) & (xa <= box[1])).all(dim=1)
    labels = torch.as_tensor(np.asarray(y), dtype=torch.int64)
    return (ok & (logits64(net, xa).argmax(dim=1) != labels)).numpy()


def attack(
    model: Any,
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    *,
    norm: str | float = 2,
    eps: float | np.ndarray,
    steps: int = 50,
    restarts: int = 3,
    step_size: float | None = None,
    dtype: torch.dtype = torch.float32,
    input_range: tuple[float, float] | None = None,
    batch_size: int = 500,
    seed: int = 0,
    progress: bool | None = None,
) -> AttackResult:
    """Projected gradient descent on the margin, with random restarts, for L2 or L-infinity balls.

    Parameters
    ----------
    model : Network, path or torch.nn.Module
        The model attacked, loaded with :func:`lipcert.load` (a torch module's input shape is read
        from ``x``): the Network's own forward pass, differentiated by torch autograd.
    x : array (N, *input_shape) or (N, d)
        Clean inputs.
    y : array (N,)
        Labels.
    norm : 2 or "inf"
        Ball of the attack.
    eps : float or array (N,)
        Radius, one for all inputs or one per input.
    steps : int
        Gradient steps per restart.
    restarts : int
        Runs per input.  The first starts at x and lowers the margin f_y - max_{j != y} f_j;
        run r >= 1 lowers f_y - f_t for the r-th most likely wrong class t at x (which finds
        boundaries the untargeted run misses), starting at x for the first K - 1 runs and
        uniformly at random in the ball once the targets cycle.  Inputs already broken are not
        attacked again.
    step_size : float, optional
        Step length as a fraction of eps (default 2.5 / steps).
    dtype : torch.float32 or torch.float64
        Precision of the gradient computation; successes are always verified in float64.
    input_range : (float, float), optional
        Box the adversarial point must stay in (default ``net.input_range``; none if unknown).
    batch_size : int
        Inputs attacked together.
    seed : int
        Seed of the random starts.
    progress : bool, optional
        Show a tqdm progress bar (default: when stderr is a terminal).

    Returns
    -------
    AttackResult
    """
    start = time.perf_counter()
    norm_name = parse_norm(norm)
    net = as_model(model, x, verb="attack")
    if dtype not in (torch.float32, torch.float64):
        raise InvalidArgumentError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    for name, value in (("steps", steps), ("restarts", restarts), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "steps" else 1):
            raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
    xt = torch.as_tensor(np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x))
    n = xt.shape[0] if xt.ndim else 0
    if xt.ndim == 0 or math.prod(xt.shape[1:]) != net.input_dim:
        raise ShapeMismatchError(f"the network takes inputs of shape (N, {', '.join(map(str, net.input_shape))}); "
                                 f"got {tuple(xt.shape)}")
    flat = xt.reshape(n, -1).to(torch.float64)
    labels = torch.as_tensor(np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y)).long()
    if labels.shape != (n,):
        raise ShapeMismatchError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    if n and (labels.min() < 0 or labels.max() >= net.output_dim):
        raise ShapeMismatchError(f"labels must be in 0..{net.output_dim - 1}")
    eps_all = check_eps(eps)
    if eps_all.size not in (1, n):
        raise ShapeMismatchError(f"eps must be one number or one per input ({n}), got {eps_all.size}")
    eps_all = np.broadcast_to(eps_all, (n,)).copy()
    box_range = net.input_range if input_range is None else input_range
    alpha = 2.5 / max(steps, 1) if step_size is None else float(step_size)
    gen = torch.Generator().manual_seed(seed)
    logits: Callable[[torch.Tensor], torch.Tensor]
    if isinstance(net, GraphNetwork):
        logits = net.forward_flat
    else:
        logits = _chain_logits(net, dtype)

    best = flat.clone()
    clean_logits = logits64(net, flat)
    margin = _margin(clean_logits, labels)
    from tqdm.auto import tqdm

    bar = tqdm(total=n, unit="input", desc=f"attack L{norm_name}",
               disable=None if progress is None else not progress, leave=False)
    try:
        for lo in range(0, n, batch_size):
            hi = min(lo + batch_size, n)
            x0, lab = flat[lo:hi], labels[lo:hi]
            e64 = torch.as_tensor(eps_all[lo:hi]) * _SHRINK
            box64 = _box(x0, box_range)
            for r in range(restarts):
                todo = (margin[lo:hi] >= 0) & (e64 > 0)
                if not bool(todo.any()):
                    break
                rows = todo.nonzero()[:, 0]
                xs, ls, es = x0[rows], lab[rows], e64[rows]
                bx = None if box64 is None else (box64[0][rows], box64[1][rows])
                delta = _start(xs, es, norm_name, r >= net.output_dim, gen)
                target = None if r == 0 else _ranked_wrong(clean_logits[lo:hi][rows], ls, r)
                delta = _descend(logits, xs.to(dtype), ls, target, es.to(dtype), delta.to(dtype), norm_name,
                                 alpha, steps, None if bx is None else (bx[0].to(dtype), bx[1].to(dtype)), gen)
                cand = _clip(xs, _project(delta.to(torch.float64), es, norm_name), bx)
                m = _margin(logits64(net, cand), ls)
                better = m < margin[lo:hi][rows]
                best[lo + rows[better]] = cand[better]
                margin[lo + rows[better]] = m[better]
            bar.update(hi - lo)
    finally:
        bar.close()
    success = verify(net, flat, labels, best, norm_name, eps_all, box_range)
    return AttackResult(norm=norm_name, eps=eps_all, success=success, adversarial=best.numpy(),
                        margin=margin.numpy(), steps=steps, restarts=restarts,
                        seconds=time.perf_counter() - start)


def _start(xs: torch.Tensor, eps: torch.Tensor, norm: str, random: bool, gen: torch.Generator) -> torch.Tensor:
    if not random:
        return torch.zeros_like(xs)
    if norm == "inf":
        return (2 * torch.rand(xs.shape, generator=gen, dtype=xs.dtype) - 1) * eps[:, None]
    d = torch.randn(xs.shape, generator=gen, dtype=xs.dtype)
    d = d / torch.clamp(d.norm(dim=1, keepdim=True), min=1e-300)
    u = torch.rand(xs.shape[0], generator=gen, dtype=xs.dtype) ** (1 / xs.shape[1])
    return d * (eps * u)[:, None]


def _ranked_wrong(f: torch.Tensor, labels: torch.Tensor, r: int) -> torch.Tensor:
    """The r-th most likely wrong class (r = 1, 2, ..., cycling over the K - 1 wrong classes)."""
    wrong = f.masked_fill(torch.nn.functional.one_hot(labels, f.shape[1]).bool(), -torch.inf)
    order = wrong.argsort(dim=1, descending=True)[:, : f.shape[1] - 1]
    return order[:, (r - 1) % order.shape[1]]


def _descend(logits, xs: torch.Tensor, ls: torch.Tensor, target: torch.Tensor | None, es: torch.Tensor,
             delta: torch.Tensor, norm: str, alpha: float, steps: int,
             box: tuple[torch.Tensor, torch.Tensor] | None, gen: torch.Generator) -> torch.Tensor:
    """PGD steps on the margin (or on f_y - f_target); returns the perturbation of lowest margin seen.

    Where the gradient vanishes (a region where the network is constant, e.g. every ReLU of a
    layer off) the step goes in a random direction instead, so the attack can leave the plateau.
    """
    delta = _clip(xs, _project(delta, es, norm), box) - xs
    best, best_m = delta.clone(), torch.full((xs.shape[0],), torch.inf, dtype=xs.dtype)
    step = alpha * es[:, None]
    for i in range(steps + 1):
        delta.requires_grad_(True)
        f = logits(xs + delta)
        m = _margin(f, ls)
        with torch.no_grad():
            improved = m < best_m
            best[improved], best_m[improved] = delta[improved], m[improved]
        if i == steps:
            break
        loss = m if target is None else f.gather(1, ls[:, None])[:, 0] - f.gather(1, target[:, None])[:, 0]
        (grad,) = torch.autograd.grad(loss.sum(), delta)
        with torch.no_grad():
            flat = (grad == 0).all(dim=1, keepdim=True)
            if bool(flat.any()):
                grad = torch.where(flat, torch.randn(grad.shape, generator=gen, dtype=grad.dtype), grad)
            if norm == "inf":
                move = grad.sign()
            else:
                move = grad / torch.clamp(grad.norm(dim=1, keepdim=True), min=1e-30)
            delta = _clip(xs, _project(delta - step * move, es, norm), box) - xs
    return best.detach()


def soundness_violations(certification: Certification, result: AttackResult,
                         method: str | None = None) -> np.ndarray:
    """Positions of inputs certified at their attacked eps yet broken by a verified attack.

    Any entry means a certified radius is wrong (a bug); sound certificates give an empty array.
    """
    if certification.norm != result.norm:
        raise InvalidNormError(f"the certification is for norm {certification.norm}, the attack for {result.norm}")
    if certification.n != result.success.size:
        raise ShapeMismatchError(f"{certification.n} certified inputs but {result.success.size} attacked")
    certified = certification.correct & (certification.radii_of(method) >= result.eps)
    return np.flatnonzero(certified & result.success)
