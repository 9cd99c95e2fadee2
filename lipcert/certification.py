"""``lipcert.certify``: certified radii of a set of inputs from margins and Lipschitz bounds.

Every input gets its float64 logits, a rigorous bound on their rounding error
(:func:`lipcert.rounding.logit_error_bound`, through residual blocks :mod:`lipcert.graph_rounding`) and, per bound method, the radius its pairwise
constants prove (:func:`lipcert.radii.radii_from_margins`); with ``local`` also the radius that
per-input local constants prove (:mod:`lipcert.local`).  Radii are in the network's input space
(raw inputs when the network carries its normalization), in the L2 or L-infinity norm
(:func:`lipcert.norms.radius_scale`).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .batch import check_count, check_number, checked_batch
from .bounds import LipschitzBound, lipschitz
from .bounds.optimize import check_options
from .errors import (
    InputRangeWarning,
    InvalidArgumentError,
    ResumeError,
    ShapeMismatchError,
    UnknownMethodError,
)
from .graph import AnyNetwork
from .graph_rounding import error_plan, forward_error
from .loading import as_model
from .local.bound import LOCAL_RULES
from .local.radius import LOCAL_METHOD, local_radii
from .network import Network, require_network
from .norms import Norm, check_eps, parse_norm, radius_scale
from .radii import pairwise_constants, radii_from_margins
from .records import (
    RECORDS_VERSION,
    RecordStore,
    array_hash,
    batch_rows,
    network_hash,
    record_columns,
)
from .runfolder import hold


@dataclass(frozen=True, eq=False)
class Certification:
    """Certified radii of a set of inputs, one bound (method) or several side by side.

    Attributes
    ----------
    index : ndarray of int64, shape (N,)
        Position of each input in its data set.
    label, prediction : ndarray of int64, shape (N,)
        True label and float64 argmax of the logits.
    margin : ndarray of float64, shape (N,)
        f_y(x) - max_{j != y} f_j(x) in float64 (negative when misclassified).
    logit_error : ndarray of float64, shape (N,)
        Bound on |computed - exact| of every logit (float64 rounding plus the extra tolerance).
    radii : dict of str to ndarray
        Certified radius of each input (in ``norm``, input units) per method; 0 when misclassified.
    norm : str
        ``"2"`` or ``"inf"``.
    input_dim : int
        d; L-infinity radii are the L2 radii divided by sqrt(d).
    bounds : dict of str to LipschitzBound
        The global bound behind each global method's radii.  The local radii (method ``"local"``)
        have no single bound: they use per-input constants, never above the pairwise minimum of these.
    timings : dict of str to float
        Seconds: ``"bound:<method>"`` for every bound computed here, ``"radii"`` for the forward
        passes and radii of this call.
    resumed : int
        Number of inputs read back from a records file instead of computed.
    tolerance : float
        Extra absolute tolerance subtracted from every logit difference (besides float64 rounding).
    seconds : float
        Wall time of the :func:`certify` call (bounds, loading of the model and radii).
    workers : int
        Dask workers the radii were computed on (0: in this process).

    Answers :class:`lipcert.results.Certificates`; ``certified`` and ``certified_accuracy`` also
    take one ``method`` (default: the best radius over methods).
    """

    index: np.ndarray
    label: np.ndarray
    prediction: np.ndarray
    margin: np.ndarray
    logit_error: np.ndarray
    radii: dict[str, np.ndarray]
    norm: Norm
    input_dim: int
    bounds: dict[str, LipschitzBound] = field(repr=False)
    timings: dict[str, float] = field(default_factory=dict)
    resumed: int = 0
    tolerance: float = 0.0
    seconds: float = 0.0
    workers: int = 0

    def __repr__(self) -> str:
        accs = ", ".join(f"{m}: median r={self.radius_stats(m)['median']:.4g}" for m in self.methods)
        return (f"Certification(n={self.n}, norm={self.norm!r}, clean_accuracy={self.clean_accuracy:.4f}, "
                f"{accs})")

    @property
    def n(self) -> int:
        return int(self.label.shape[0])

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self.radii)

    @property
    def correct(self) -> np.ndarray:
        return self.prediction == self.label

    @property
    def clean_accuracy(self) -> float:
        return float(self.correct.mean()) if self.n else 0.0

    @property
    def radius(self) -> np.ndarray:
        """Best proven radius per input: the maximum over methods (each is a valid radius)."""
        return np.maximum.reduce(list(self.radii.values()))

    def radii_of(self, method: str | None = None) -> np.ndarray:
        """Radii of one method, or the best over methods for ``None``."""
        if method is None:
            return self.radius
        if method not in self.radii:
            raise KeyError(f"no radii for method {method!r}; this certification has {', '.join(self.radii)}")
        return self.radii[method]

    def certified(self, eps: float, method: str | None = None) -> np.ndarray:
        """Mask of inputs correctly classified and certified at eps (radius >= eps)."""
        e = float(check_eps(eps)[0])
        return self.correct & (self.radii_of(method) >= e)

    def certified_accuracy(self, eps: float | Sequence[float] | np.ndarray,
                           method: str | None = None) -> np.ndarray:
        """Share of inputs that are correct and certified at each eps (no recomputation)."""
        grid = check_eps(eps)
        if self.n == 0:
            return np.zeros_like(grid)
        r = np.where(self.correct, self.radii_of(method), -np.inf)
        return (r[None, :] >= grid[:, None]).mean(axis=1)

    def radius_stats(self, method: str | None = None) -> dict[str, float]:
        """Mean, median, max radius over correctly classified inputs, and the share with radius > 0."""
        r = self.radii_of(method)[self.correct]
        if r.size == 0:
            return {"mean": 0.0, "median": 0.0, "max": 0.0, "positive": 0.0}
        return {"mean": float(r.mean()), "median": float(np.median(r)), "max": float(r.max()),
                "positive": float((r > 0).mean())}


# ---------------------------------------------------------------------------------- the verb
def method_bound(net: AnyNetwork, name: str, max_bytes: float | None = None) -> LipschitzBound:
    """The global bound behind the radii of one method: :func:`lipcert.lipschitz`, and for
    ``optimized`` also every margin direction e_i - e_j (warm-started from the full-vector optimum)."""
    return lipschitz(net, name, options={"pairs": True} if name == "optimized" else None, max_bytes=max_bytes)


def _bounds(net: AnyNetwork, method: str | Sequence[str],
            bound: LipschitzBound | Sequence[LipschitzBound] | Mapping[str, LipschitzBound] | None,
            max_bytes: float | None = None) -> tuple[dict[str, LipschitzBound], dict[str, float]]:
    timings: dict[str, float] = {}
    if bound is not None:
        given = ({bound.method: bound} if isinstance(bound, LipschitzBound) else
                 dict(bound) if isinstance(bound, Mapping) else
                 {b.method: b for b in bound} if isinstance(bound, Sequence) else {})
        if not given or not all(isinstance(b, LipschitzBound) for b in given.values()):
            raise InvalidArgumentError(f"bound must be a LipschitzBound (from lipcert.lipschitz), a non-empty list "
                                       f"or mapping of them, or None; got {type(bound).__name__} {bound!r:.60}")
        fingerprint = net.fingerprint()
        for b in given.values():
            b.require_network(fingerprint)
        return given, timings
    items = [method] if isinstance(method, str) else list(method) if isinstance(method, Sequence) else [method]
    if not all(isinstance(m, str) for m in items):
        raise UnknownMethodError(f"method must be a method name or a list of them, got {method!r:.60}")
    names = [m.strip() for item in items for m in item.split(",") if m.strip()]
    if not names:
        raise UnknownMethodError(f"method {method!r} names no method")
    out = {}
    for name in dict.fromkeys(names):
        b = method_bound(net, name, max_bytes)
        out[name] = b
        timings[f"bound:{name}"] = b.seconds
    return out, timings


def _local_options(local: Literal[True] | Sequence[Any] | Mapping[str, Any], rules: Sequence[Any]) -> dict[str, Any]:
    """Keyword arguments of :func:`lipcert.local.local_radii` from certify's ``local`` argument."""
    if local is True:
        return {"rules": tuple(rules)}
    if isinstance(local, str) or not isinstance(local, Sequence | Mapping):
        raise InvalidArgumentError(f"local must be True/False, a list of rules or a mapping of options, got "
                                   f"{local!r:.60}")
    if not isinstance(local, Mapping):
        return {"rules": tuple(local)}
    unknown = sorted(set(local) - {"rules", "iterations", "seconds"})
    if unknown:
        raise InvalidArgumentError(f"unknown local option(s) {', '.join(map(repr, unknown))}; "
                                   "known: 'rules', 'iterations', 'seconds'")
    budget = check_options({k: v for k, v in local.items() if k != "rules"})  # the optimizer's own checks
    return {"rules": tuple(local.get("rules", rules)), **budget}


def _header(net: AnyNetwork, flat: torch.Tensor, labels: np.ndarray, idx: np.ndarray, norm: Norm, tolerance: float,
            bounds: Mapping[str, LipschitzBound], methods: Sequence[str]) -> dict[str, Any]:
    """The fingerprint of a run in its records file: network, data, norm, tolerance, and per method the
    value of the global bound behind its radii (for the local radii: the best global bound, their floor)."""
    values = {m: bounds[m].value if m in bounds else min(b.value for b in bounds.values()) for m in methods}
    return {"version": RECORDS_VERSION, "network": network_hash(net), "n": flat.shape[0],
            "data": array_hash(flat.numpy(), labels, idx), "norm": norm, "tolerance": tolerance, "methods": list(methods),
            "bounds": values}


def _as_inputs(net: AnyNetwork, x: Any, y: Any, index: Any) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    shape = net.info.get("output_shape")
    if shape is not None and sum(int(d) != 1 for d in shape) > 1:
        raise ShapeMismatchError(f"the model's output has shape {tuple(shape)} per input, not one vector of logits: "
                                 "its entries are no classes to certify (select or flatten the logits in the model "
                                 "if that is what it means)")
    inputs, labels = checked_batch(x, y, net.input_shape, net.output_dim)
    if labels.size == 0:
        raise ShapeMismatchError("no inputs to certify (0 rows)")
    flat = inputs.reshape(inputs.shape[0], -1)
    idx = np.arange(flat.shape[0], dtype=np.int64) if index is None else np.asarray(index, dtype=np.int64)
    if idx.shape != labels.shape:
        raise ShapeMismatchError(f"index must have shape {labels.shape}, got {idx.shape}")
    return flat, labels, idx


def _warn_outside_range(net: AnyNetwork, flat: torch.Tensor) -> None:
    """Warn (InputRangeWarning) when the inputs leave the model's declared input range."""
    if net.input_range is None or flat.numel() == 0:
        return
    lo, hi = float(flat.min()), float(flat.max())
    if lo < net.input_range[0] or hi > net.input_range[1]:
        warnings.warn(InputRangeWarning(
            f"the inputs range over [{lo:.4g}, {hi:.4g}] but the model declares inputs in [{net.input_range[0]:.4g}, "
            f"{net.input_range[1]:.4g}] (pixels in 0..255 for a model of [0, 1] inputs?); the radii are in the "
            "units of the inputs given"), stacklevel=3)


@dataclass(frozen=True, eq=False)
class _Job:
    """What every batch of a run needs, computed once (and sent once to every worker of a cluster)."""

    net: AnyNetwork
    layers: Any
    pairs: dict[str, np.ndarray]
    scale: float
    tolerance: float
    norm: Norm
    floor: np.ndarray
    local: dict[str, Any] | None
    threads: int


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """Torch (OpenMP, MKL) intra-op threads set to ``n`` for a block: float sums and LAPACK calls split
    work by thread, so equal bits need equal thread counts (restored after, so the process keeps its own)."""
    old = torch.get_num_threads()
    if n != old:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != old:
            torch.set_num_threads(old)


def _forward_batch(job: _Job, xb: torch.Tensor, lab: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Logits, rounding bound, margins and global radii of one batch (a records batch: same batch, same bits),
    with the intra-op threads of the process that made ``job``."""
    with torch.no_grad(), _threads(job.threads):
        logits_t, err_t = forward_error(job.layers, xb)
    logits, err = logits_t.numpy(), err_t.numpy() + job.tolerance
    others = np.where(np.eye(logits.shape[1], dtype=bool)[lab], -np.inf, logits)
    batch = {"index": ids, "label": lab, "prediction": logits.argmax(axis=1),
             "margin": logits[np.arange(len(lab)), lab] - others.max(axis=1), "logit_error": err, "logits": logits}
    batch.update({f"radius:{m}": radii_from_margins(logits, err, lab, p, job.scale) for m, p in job.pairs.items()})
    return batch


def _local_batch(job: _Job, xb: torch.Tensor, batch: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Local radii (and seconds) of the inputs ``xb`` of a forward batch; each input's radius depends on it alone.

    One thread: the same bits in every process, and the fastest use of cores shared by inputs (the
    hidden-width Cholesky and eigenvalue calls of one input are too small to gain from threads)."""
    assert job.local is not None
    best = np.maximum.reduce([batch[f"radius:{m}"] for m in job.pairs])
    with _threads(1):
        return local_radii(job.net, xb, batch["label"], batch["logits"], batch["logit_error"], job.floor, job.norm,
                           best, **job.local)


def _serial_batch(job: _Job, xb: torch.Tensor, lab: np.ndarray, ids: np.ndarray,
                  progress: Callable[[int], Any]) -> dict[str, np.ndarray]:
    """One batch in this process: :func:`_forward_batch`, then :func:`_local_batch` when asked for."""
    batch = _forward_batch(job, xb, lab, ids)
    if job.local is not None:
        batch[f"radius:{LOCAL_METHOD}"], batch["local_seconds"] = _local_batch(job, xb, batch)
    progress(len(lab))
    return batch


def certify(
    model: Any,
    x: Any,
    y: Any,
    *,
    norm: str | float = 2,
    method: str | Sequence[str] = "combined",
    bound: LipschitzBound | Sequence[LipschitzBound] | Mapping[str, LipschitzBound] | None = None,
    batch_size: int = 1000,
    index: Any = None,
    tolerance: float = 0.0,
    records: str | Path | None = None,
    resume: bool = False,
    progress: bool | None = None,
    local: bool | Sequence[Any] | Mapping[str, Any] = False,
    client: Any = None,
    max_bytes: float | None = None,
) -> Certification:
    """Certified radius of every input: its prediction, margin and the radius proven by each bound.

    Parameters
    ----------
    model : Network, GraphNetwork, path or torch.nn.Module
        The classifier, loaded with :func:`lipcert.load` (a torch module's input shape is read from
        ``x``); radii refer to its input space (raw inputs when it carries its normalization).
    x : array (N, *input_shape) or (N, d)
        Inputs (numpy or torch); evaluated in float64.
    y : array (N,)
        Integer labels in 0..K-1.
    norm : 2 or "inf"
        Norm of the radii; L-infinity radii are the L2 radii divided by sqrt(d).
    method : str or list of str
        Bound method(s) of :func:`lipcert.lipschitz` (``"naive,eclipse-fast,combined"`` works too);
        every bound is computed once and gives its own radii.  ``"optimized"`` also optimizes each of
        the K(K-1)/2 margin directions once (option ``pairs``), shared by all inputs.
    bound : LipschitzBound or list of them, optional
        Bounds already computed (then ``method`` is ignored).
    batch_size : int
        Inputs per forward pass.
    index : array (N,), optional
        Position of each input in its data set (default 0..N-1), kept in the records.
    tolerance : float
        Extra absolute error allowed on every logit, e.g. the gap to a float32 deployment.
    records : path, optional
        JSON-lines file to which per-input records are appended batch by batch.
    resume : bool
        Continue from ``records`` (which must come from the same model, data, norm and bounds)
        without recomputing its finished batches.
    progress : bool, optional
        Show a tqdm progress bar (default: when stderr is a terminal).
    local : bool, sequence of rules or mapping
        Also certify with per-input local Lipschitz constants (:mod:`lipcert.local`): an
        extra method ``"local"``, never below the best global radius; timings ``"local"`` (total)
        and ``"local_per_input"``.  Costs several local bounds per input.  Residual graphs get them
        through their chain form and the graph recursion (:mod:`lipcert.local.graph`).  A sequence of rules
        (``Rule`` or names like ``"gcs(1)"``) replaces the default local rule set; a mapping sets
        any of ``rules``, ``iterations`` (of the optimized margins, 0 = off) and ``seconds`` (their
        budget per input), see :func:`lipcert.local.local_radius`.

    client : distributed.Client, optional
        Compute the radii on this Dask cluster (:mod:`lipcert.distributed`): the bounds are computed
        here once and sent to every worker, the batches (and the local radii in shards of inputs)
        run on the workers, this process alone writes ``records``; the radii are those of the
        serial run.
    max_bytes : float, optional
        Limit on each bound method's estimated working memory (:func:`lipcert.lipschitz`; default
        80 % of the memory available).

    Returns
    -------
    Certification

    Notes
    -----
    The margin f_y - f_j is computed in float64 and reduced by twice a rigorous bound on the
    logits' rounding error (:func:`lipcert.rounding.logit_error_bound`, through residual blocks :mod:`lipcert.graph_rounding`) plus ``tolerance``, so a reported radius is
    never larger than what the bound proves for the exact network.
    """
    wall = time.perf_counter()
    norm_name = parse_norm(norm)
    batch_size = check_count("batch_size", batch_size)
    tolerance = check_number("tolerance", tolerance)
    net = as_model(model, x, verb="certify")
    flat, labels, idx = _as_inputs(net, x, y, index)
    _warn_outside_range(net, flat)
    bounds, timings = _bounds(net, method, bound, max_bytes)
    pairs = {name: pairwise_constants(b, net) for name, b in bounds.items()}
    scale = radius_scale(norm_name, net.input_dim)
    n = flat.shape[0]
    methods = list(bounds) + ([LOCAL_METHOD] if local else [])
    local_seconds = 0.0
    workers = 0

    done: list[dict[str, np.ndarray]] = []
    store = None
    resumed = 0
    with contextlib.ExitStack() as stack:  # the records' lock and the progress bar
        if records is not None:
            stack.enter_context(hold(records))
            store = RecordStore(Path(records), _header(net, flat, labels, idx, norm_name, tolerance, bounds, methods),
                                resume, batch_size)
            resumed = len(store.rows)
            if resumed:
                done.append(record_columns(store.rows, methods))
                if not np.array_equal(done[0]["index"], idx[:resumed]):
                    raise ResumeError(f"{records}: recorded indices do not match the inputs")

        floor = np.minimum.reduce(list(pairs.values()))
        # local radii read dense weight matrices: an operator network is densified once, memory-checked
        # (a residual graph is bounded through its chain form, lipcert.local.graph)
        limit = None if max_bytes is None else int(max_bytes)
        local_net = require_network(net, "certify(local=...)", max_bytes=limit) if local and isinstance(
            net, Network) else net
        job = _Job(local_net, error_plan(net), pairs, scale, float(tolerance), norm_name, floor,
                   _local_options(local, LOCAL_RULES) if local else None, torch.get_num_threads())
        start = time.perf_counter()
        from tqdm.auto import tqdm

        bar = stack.enter_context(tqdm(total=n, initial=resumed, unit="input", desc="certify",
                                       disable=None if progress is None else not progress, leave=False))
        shards = [(flat[lo:lo + batch_size].to(torch.float64), labels[lo:lo + batch_size], idx[lo:lo + batch_size])
                  for lo in range(resumed, n, batch_size)]
        finished: Iterator[dict[str, np.ndarray]]
        if client is None:
            finished = (_serial_batch(job, *shard, bar.update) for shard in shards)
        else:
            from .distributed import sharded_batches

            finished = sharded_batches(client, job, _forward_batch, _local_batch if local else None, shards,
                                       bar.update)
            workers = len(client.nthreads())
        lo = resumed
        for batch in finished:
            local_seconds += float(batch.pop("local_seconds", np.zeros(0)).sum())
            if store is not None:
                store.append(batch_rows(batch, methods, lo))
            done.append(batch)
            lo += len(batch["label"])
    timings["radii"] = time.perf_counter() - start
    if local:
        timings.update({"local": local_seconds, "local_per_input": local_seconds / max(n - resumed, 1)})

    def col(key: str, dtype: type) -> np.ndarray:
        return np.concatenate([d[key] for d in done]).astype(dtype) if done else np.zeros(0, dtype)

    return Certification(
        index=col("index", np.int64), label=col("label", np.int64), prediction=col("prediction", np.int64),
        margin=col("margin", np.float64), logit_error=col("logit_error", np.float64),
        radii={m: col(f"radius:{m}", np.float64) for m in methods},
        norm=norm_name, input_dim=net.input_dim, bounds=bounds, timings=timings, resumed=resumed,
        tolerance=float(tolerance), seconds=time.perf_counter() - wall, workers=workers)

