"""auto_LiRPA (IBP, CROWN, alpha-CROWN) on the same model, inputs, norm and radius as lipcert.

The verifier runs on :func:`lipcert.adapters.rebuild.to_torch` of the model: the same
float64 function as the :class:`~lipcert.Network` lipcert bounds (convolutions kept), so both
tools certify one model.  Each input is checked with the margin specification
``C[j] = e_y - e_j`` (true class minus every other class): the input is *verified* at eps
when the verifier's lower bound of every margin ``f_y(x') - f_j(x')`` over the whole norm ball
``||x' - x|| <= eps`` is positive.  No clipping to the input range is applied, so the property
is exactly the one a lipcert radius >= eps proves.  Bounds are computed in float64.

auto_LiRPA is an optional dependency: ``pip install --no-deps auto-LiRPA==0.3`` (its metadata
pins torch<1.13, so pip cannot install it as a normal dependency next to torch 2.x).  The
compatibility shims in :func:`~lipcert.adapters.lirpa_import.load_auto_lirpa` are applied only
when this adapter is used.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import torch

from lipcert.batch import checked_batch
from lipcert.errors import GraphNetworkError, UnknownVerifierError
from lipcert.local.bound import Intervals
from lipcert.network import Network
from lipcert.norms import Norm, check_eps, parse_norm
from lipcert.results import EpsLike, grid_rows, largest_proven

from .graph import Conversion
from .lirpa_import import load_auto_lirpa
from .modules import ActivationModule
from .rebuild import chain_of, to_torch

Verifier = Literal["ibp", "crown", "alpha-crown"]
"""A parsed verifier name (:func:`verifier_name`)."""
METHODS: dict[Verifier, str] = {"ibp": "IBP", "crown": "CROWN", "alpha-crown": "alpha-CROWN"}
"""Verifier names accepted here -> auto_LiRPA's ``compute_bounds(method=...)``."""
BOUND_OPTS = {"sparse_features_alpha": False, "sparse_spec_alpha": False}
"""auto_LiRPA 0.3's sparse alphas crash alpha-CROWN: sparse features when > 90 % of a ReLU layer is
unstable (``activation.py``: ``self.alpha_indices = None`` is indented under ``if verbosity > 0``),
sparse specs on conv models (``assert self.alpha_lookup_idx[start_node.name] is None``)."""
RADIUS_STEPS = 12
"""Bisection steps of :func:`certified_radius`: the bracket shrinks by 2**-12 (0.025 %)."""


def verifier_name(name: str) -> Verifier:
    """``"CROWN"``, ``"alpha_crown"``, ... -> the canonical key of :data:`METHODS`."""
    key = str(name).strip().lower().replace("_", "-").replace("α", "alpha-").replace("alpha--", "alpha-")
    if key in ("crown-optimized", "alphacrown"):
        key = "alpha-crown"
    if key not in METHODS:
        raise UnknownVerifierError(f"unknown verifier {name!r}; use one of {', '.join(METHODS)}")
    return cast(Verifier, key)


@dataclass(frozen=True, eq=False)
class LirpaModel:
    """A model ready for auto_LiRPA: the float64 torch module and its BoundedModule.

    Attributes
    ----------
    module : torch.nn.Module
        The rebuilt model (raw inputs of shape ``(B, *input_shape)`` -> logits ``(B, K)``).
    bounded : auto_LiRPA.BoundedModule
    input_shape : tuple of int
    outputs : int
        K, the number of classes.
    """

    module: torch.nn.Module
    bounded: Any
    input_shape: tuple[int, ...]
    outputs: int


def bounded_module(source: Any, *, input_shape: Sequence[int] | None = None,
                   mean: Sequence[float] | float | None = None, std: Sequence[float] | float | None = None
                   ) -> LirpaModel:
    """auto_LiRPA's BoundedModule of a model, built from the same source lipcert loads.

    Parameters
    ----------
    source : Network, path (.onnx, .pt, .pth, .npz), torch.nn.Module or LirpaModel
        Rebuilt with :func:`~lipcert.adapters.rebuild.to_torch` (a LirpaModel is returned as is).
    input_shape, mean, std
        As for :func:`lipcert.load`; raw inputs in, normalization inside.
    """
    if isinstance(source, LirpaModel):
        return source
    lirpa = load_auto_lirpa()
    if not isinstance(source, (Network, Conversion)):
        source = chain_of(source, input_shape=input_shape, mean=mean, std=std)
    module = to_torch(source)
    shape = tuple(source.input_shape)
    example = torch.zeros(1, *shape, dtype=torch.float64)
    with torch.no_grad():
        outputs = int(module(example).shape[1])
    with _float64():  # tables of tanh/sigmoid relaxations are made at construction, in the default dtype
        bounded = lirpa.BoundedModule(module, example, bound_opts=_bound_opts(module), device="cpu", verbose=False)
    return LirpaModel(module, bounded, tuple(shape), outputs)


def _bound_opts(module: torch.nn.Module) -> dict[str, Any]:
    """:data:`BOUND_OPTS`, and matrix mode for a module with sums of flat tensors (``flat_merges``): auto_LiRPA 0.3
    crashes on an Add of flat tensors in its default "patches" mode (backward_bound.py: get_sparse_C reads
    output_shape[-3] of every BoundAdd); "matrix" mode bounds them correctly."""
    return {**BOUND_OPTS, **({"conv_mode": "matrix"} if getattr(module, "flat_merges", False) else {})}


@contextlib.contextmanager
def _float64() -> Iterator[None]:
    # auto_LiRPA 0.3 makes some tensors in torch's default dtype (alpha-CROWN's best bounds in
    # optimized_bounds.py, the sigmoid/tanh relaxation tables), which then clash with float64
    # bounds; float64 is the default while it builds and bounds.
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def margin_matrix(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """C of shape (B, K-1, K): row j is e_y - e_j for every class j != y (in increasing j)."""
    eye = torch.eye(classes, dtype=torch.float64)
    others = torch.stack([torch.cat([torch.arange(y), torch.arange(y + 1, classes)]) for y in labels.tolist()])
    return eye[labels].unsqueeze(1) - eye[others]


def margin_lower_bounds(model: LirpaModel, x: torch.Tensor, labels: torch.Tensor, eps: float | torch.Tensor,
                        norm: str, method: Verifier) -> torch.Tensor:
    """Verifier lower bounds (B, K-1) of f_y(x') - f_j(x') over ``||x' - x||_norm <= eps``."""
    lirpa = load_auto_lirpa()
    p = 2.0 if norm == "2" else np.inf
    ptb = lirpa.PerturbationLpNorm(norm=p, eps=eps)
    bx = lirpa.BoundedTensor(x.to(torch.float64), ptb)
    c = margin_matrix(labels, model.outputs)
    kind = METHODS[method]
    with _float64():
        lower, _ = model.bounded.compute_bounds(x=(bx,), C=c, method=kind, bound_upper=False)
    return lower.detach()


@dataclass(frozen=True, eq=False)
class Verification:
    """Verifier results of a set of inputs at several eps (one verifier, one norm).

    Attributes
    ----------
    verifier : str
        ``"ibp"``, ``"crown"`` or ``"alpha-crown"``.
    norm : str
        ``"2"`` or ``"inf"``.
    eps : ndarray (E,)
    index, label, prediction : ndarray of int64 (N,)
    verified : ndarray of bool (E, N)
        Every margin lower bound at eps is > 0 (which implies the label is the exact argmax at x).
    lower : ndarray of float64 (E, N, K-1)
        Lower bounds of f_y - f_j over the eps-ball, the other classes j in increasing order.
    input_seconds : ndarray of float64 (E, N)
        Time per input (the time of its batch divided by the batch size).
    seconds : float
        Wall time of the :func:`verify` call.

    Answers :class:`lipcert.results.Certificates` on its eps grid: ``certified(eps)`` and
    ``certified_accuracy(eps)`` take eps of :attr:`eps` only (:class:`~lipcert.errors.EpsNotInGridError`
    otherwise); ``radius`` is the largest verified eps per input, 0 if none (a sound lower bound on
    the robust radius).
    """

    verifier: Verifier
    norm: Norm
    eps: np.ndarray
    index: np.ndarray
    label: np.ndarray
    prediction: np.ndarray
    verified: np.ndarray
    lower: np.ndarray
    input_seconds: np.ndarray
    seconds: float

    @property
    def n(self) -> int:
        return int(self.label.shape[0])

    @property
    def min_lower(self) -> np.ndarray:
        """(E, N): the smallest margin lower bound per input (verified iff > 0)."""
        return self.lower.min(axis=2)

    @property
    def radius(self) -> np.ndarray:
        """(N,): the largest eps verified per input, 0 if none."""
        return largest_proven(self.eps, self.verified)

    def certified(self, eps: float) -> np.ndarray:
        """(N,): verified at ``eps``, one of :attr:`eps`."""
        return self.verified[grid_rows(self.eps, eps)[0]]

    def certified_accuracy(self, eps: EpsLike | None = None) -> np.ndarray:
        """(E,): share of inputs verified at each eps (default: every eps of the grid)."""
        rows = grid_rows(self.eps, eps)
        return self.verified[rows].mean(axis=1) if self.n else np.zeros(len(rows))

    def seconds_per_input(self) -> float:
        """Mean time per input and eps."""
        return float(self.input_seconds.mean()) if self.input_seconds.size else 0.0


def _batches(x: torch.Tensor, y: torch.Tensor, batch_size: int):
    for lo in range(0, x.shape[0], batch_size):
        yield lo, x[lo:lo + batch_size], y[lo:lo + batch_size]


def _bounded(model: Any, x: Any) -> LirpaModel:
    """The verb's model as a LirpaModel, a torch module's input shape read from the inputs ``x``."""
    shape = tuple(np.shape(x)[1:]) if isinstance(model, torch.nn.Module) else None
    return bounded_module(model, input_shape=shape)


def _inputs(model: LirpaModel, x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, labels = checked_batch(x, y, tuple(model.input_shape), model.outputs)
    return inputs.to(torch.float64), torch.from_numpy(labels)


def verify(model: Any, x: Any, y: Any, *, eps: float | Sequence[float], norm: str | float = 2,
           verifier: str = "crown", batch_size: int = 32, index: Any = None) -> Verification:
    """Verify every input at every eps with one auto_LiRPA method and the margin specification.

    Parameters
    ----------
    model : LirpaModel or anything :func:`bounded_module` accepts
        A torch module's input shape is read from ``x``.
    x : array (N, *input_shape)
        Raw inputs (the model's input space, as lipcert's radii).
    y : array (N,)
        Labels.
    eps : float or list of float
        Radii of the balls, in ``norm``.
    norm : 2 or "inf"
    verifier : "ibp", "crown" or "alpha-crown"
    batch_size : int
        Inputs per compute_bounds call.
    index : array (N,), optional
        Position of each input in its data set.

    Returns
    -------
    Verification
    """
    wall = time.perf_counter()
    name, norm_name, grid = verifier_name(verifier), parse_norm(norm), check_eps(eps)
    lm = _bounded(model, x)
    xt, yt = _inputs(lm, x, y)
    n, k = xt.shape[0], lm.outputs
    with torch.no_grad():
        prediction = lm.module(xt).argmax(dim=1).numpy() if n else np.zeros(0, np.int64)
    lower = np.zeros((len(grid), n, k - 1))
    seconds = np.zeros((len(grid), n))
    for i, e in enumerate(grid):
        for lo, xb, yb in _batches(xt, yt, batch_size):
            start = time.perf_counter()
            lower[i, lo:lo + len(yb)] = margin_lower_bounds(lm, xb, yb, float(e), norm_name, name).numpy()
            seconds[i, lo:lo + len(yb)] = (time.perf_counter() - start) / len(yb)
    idx = np.arange(n, dtype=np.int64) if index is None else np.asarray(index, dtype=np.int64)
    return Verification(name, norm_name, grid, idx, yt.numpy(), prediction.astype(np.int64),
                        lower.min(axis=2, initial=np.inf) > 0, lower, seconds, time.perf_counter() - wall)


@dataclass(frozen=True, eq=False)
class RadiusSearch:
    """Certified radii found by bisection on eps (each radius is an eps the verifier verified).

    Attributes
    ----------
    verifier, norm : str
    index, label : ndarray (N,)
    radius : ndarray of float64 (N,)
        Largest eps verified (0 when the input is not verified even at the smallest eps tried).
    upper : ndarray of float64 (N,)
        Smallest eps tried that was not verified (inf if every eps tried was verified).
    steps : int
        Bisection steps after the bracketing phase.
    calls : int
        compute_bounds calls per input.
    input_seconds : ndarray of float64 (N,)
        Time per input.
    seconds : float
        Wall time of the :func:`certified_radius` call.

    Answers :class:`lipcert.results.Certificates` at any eps: an input is certified at eps when
    its radius is positive and >= eps (a verified eps > 0 implies the label is the exact argmax).
    """

    verifier: Verifier
    norm: Norm
    index: np.ndarray
    label: np.ndarray
    radius: np.ndarray
    upper: np.ndarray
    steps: int
    calls: int
    input_seconds: np.ndarray
    seconds: float

    def certified(self, eps: float) -> np.ndarray:
        """(N,): a verified radius >= ``eps`` (and > 0)."""
        e = float(check_eps(eps)[0])
        return (self.radius > 0) & (self.radius >= e)

    def certified_accuracy(self, eps: EpsLike) -> np.ndarray:
        """(E,): share of inputs certified at each eps."""
        grid = check_eps(eps)
        if self.radius.size == 0:
            return np.zeros_like(grid)
        return np.stack([self.certified(e) for e in grid]).mean(axis=1)


def certified_radius(model: Any, x: Any, y: Any, *, norm: str | float = 2, verifier: str = "crown",
                     start: float | Sequence[float] = 0.01, steps: int = RADIUS_STEPS, max_doublings: int = 30,
                     index: Any = None) -> RadiusSearch:
    """Largest eps at which the verifier proves each input, by bracketing then bisection.

    From ``start`` the eps is doubled while verified and halved while not (up to
    ``max_doublings`` times each), giving lo < hi with lo verified and hi not; then ``steps``
    bisection steps on [lo, hi], keeping the verified end.  The radius returned is always an
    eps that was verified; hi / lo - 1 <= 2**-steps after the search (unless a limit was hit).
    Inputs are processed one at a time (each has its own eps).
    """
    wall = time.perf_counter()
    name, norm_name = verifier_name(verifier), parse_norm(norm)
    lm = _bounded(model, x)
    xt, yt = _inputs(lm, x, y)
    n = xt.shape[0]
    starts = np.broadcast_to(check_eps(start), (n,)) if np.ndim(start) else np.full(n, start, dtype=np.float64)
    radius, upper, seconds = np.zeros(n), np.full(n, np.inf), np.zeros(n)
    calls = 0
    for i in range(n):
        t0 = time.perf_counter()
        xi, yi = xt[i:i + 1], yt[i:i + 1]
        count = 0

        def ok(e: float) -> bool:
            nonlocal count
            count += 1
            return bool((margin_lower_bounds(lm, xi, yi, e, norm_name, name) > 0).all())

        lo, hi = 0.0, math.inf
        e = max(float(starts[i]), 1e-12)
        for _ in range(max_doublings):
            if ok(e):
                lo = e
                if hi < math.inf:
                    break
                e *= 2
            else:
                hi = e
                if lo > 0:
                    break
                e /= 2
        if lo > 0 and hi < math.inf:
            for _ in range(steps):
                mid = 0.5 * (lo + hi)
                if ok(mid):
                    lo = mid
                else:
                    hi = mid
        radius[i], upper[i], seconds[i] = lo, hi, time.perf_counter() - t0
        calls = max(calls, count)
    idx = np.arange(n, dtype=np.int64) if index is None else np.asarray(index, dtype=np.int64)
    return RadiusSearch(name, norm_name, idx, yt.numpy(), radius, upper, steps, calls, seconds,
                        time.perf_counter() - wall)


@dataclass(frozen=True, eq=False)
class PreactivationBounds:
    """Bounds on the pre-activation values of every hidden layer over a norm ball.

    Attributes
    ----------
    lower, upper : list of ndarray (B, n_k)
        One pair per hidden layer k = 1..L-1 of the Network (the inputs of its activations),
        flattened in the Network's (row-major) order: lower <= W_k a_{k-1} + b_k <= upper for every
        input in the ball.
    verifier, norm : str
    eps : float
    """

    lower: list[np.ndarray]
    upper: list[np.ndarray]
    verifier: str
    norm: str
    eps: float


def preactivation_bounds(model: Any, x: Any, *, eps: float, norm: str | float = 2,
                         verifier: str = "crown") -> PreactivationBounds:
    """auto_LiRPA bounds of every hidden layer's pre-activations over ``||x' - x||_norm <= eps``.

    Aligned with the Network's hidden layers: entry k bounds the input of the k-th activation
    of the chain (as many entries as ``Network.activations``), flattened.  Each prefix of the
    model up to an activation is bounded on its own (IBP, CROWN or alpha-CROWN on the prefix).
    """
    lm = _bounded(model, x)
    name, norm_name = verifier_name(verifier), parse_norm(norm)
    e = float(check_eps(eps)[0])
    xt, _ = _inputs(lm, x, np.zeros(np.shape(x)[0], dtype=np.int64))
    if not isinstance(lm.module, torch.nn.Sequential):
        raise GraphNetworkError("preactivation bounds (for local radii) need a chain model; this one has residual "
                                "connections (docs/decisions.md 28)")
    layers = list(lm.module)
    cuts = [i for i, m in enumerate(layers) if isinstance(m, ActivationModule)]
    lirpa = load_auto_lirpa()
    p = 2.0 if norm_name == "2" else np.inf
    lows, highs = [], []
    for cut in cuts:
        prefix = torch.nn.Sequential(*layers[:cut], torch.nn.Flatten()).eval()
        bx = lirpa.BoundedTensor(xt, lirpa.PerturbationLpNorm(norm=p, eps=e))
        with _float64():
            bm = lirpa.BoundedModule(prefix, xt[:1], bound_opts=_bound_opts(lm.module), device="cpu", verbose=False)
            low, high = bm.compute_bounds(x=(bx,), method=METHODS[name])
        lows.append(low.detach().numpy())
        highs.append(high.detach().numpy())
    return PreactivationBounds(lows, highs, name, norm_name, e)


def lirpa_intervals(net: Network, norm: str | float = 2, verifier: str = "crown") -> Intervals:
    """An ``intervals`` provider for :func:`lipcert.local.local_radius` from :func:`preactivation_bounds`.

    Each call bounds every prefix of the network with ``verifier`` (``"ibp"``, ``"crown"`` or
    ``"alpha-crown"``) on the same float64 function; it costs about one verifier call per hidden
    layer.  Needs the auto_LiRPA extra.
    """
    model = bounded_module(net)
    norm_name = parse_norm(norm)

    def provide(centre: torch.Tensor, radius: float) -> list[tuple[np.ndarray, np.ndarray]]:
        pb = preactivation_bounds(model, centre.reshape(1, *net.input_shape).numpy(), eps=radius,
                                  norm=norm_name, verifier=verifier)
        return [(lo[0], hi[0]) for lo, hi in zip(pb.lower, pb.upper)]

    return provide
