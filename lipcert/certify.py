"""``lipcert.certify``: certified radii from margins and pairwise Lipschitz constants.

For an input x with label y and logits f(x), every pair (y, j) has a constant L_yj >= Lip_2(f_y - f_j)
(:meth:`LipschitzBound.pairwise`, math.md section 7(i)), so the prediction y cannot change inside
the L2 ball of radius

    r(x) = min_{j != y} (f_y(x) - f_j(x) - tol_j(x)) / L_yj          (0 when x is misclassified)

where tol_j(x) bounds the floating-point error of the computed margin (see :func:`logit_error_bound`).
L-infinity radii are r(x) / sqrt(d) (d the input dimension), because ||v||_2 <= sqrt(d) ||v||_inf.
Radii are in the network's input space: raw inputs when the network carries its normalization.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .batch import checked_batch
from .bounds import LipschitzBound, lipschitz
from .bounds.optimize import check_options
from .errors import LipcertError, ShapeMismatchError
from .network import Network

UNIT_ROUNDOFF = 2.0**-53
NORMS = ("2", "inf")
RECORDS_VERSION = 1


class InvalidArgumentError(LipcertError, ValueError):
    """An argument outside its valid range (a batch size below 1, a negative tolerance, ...)."""


class InvalidRadiusError(InvalidArgumentError):
    """An eps (radius) that is negative, NaN or infinite."""


class InvalidNormError(LipcertError, ValueError):
    """A norm other than 2 and infinity."""


class ResumeError(LipcertError, ValueError):
    """A records file that belongs to another run, or one that exists when resume was not asked for."""


def parse_norm(norm: str | float | int) -> str:
    """``2``, ``"2"``, ``"l2"`` -> ``"2"``; ``inf``, ``"inf"``, ``"linf"`` -> ``"inf"``."""
    text = str(norm).strip().lower().replace("-", "").replace("_", "")
    if text in ("2", "2.0", "l2"):
        return "2"
    if text in ("inf", "linf", "infinity", "linfinity"):
        return "inf"
    raise InvalidNormError(f"unsupported norm {norm!r}: use 2 (or l2) or inf (or linf)")


def check_eps(eps: float | Sequence[float] | np.ndarray) -> np.ndarray:
    """eps as a float64 array, or :class:`InvalidRadiusError` naming the first bad value."""
    arr = np.atleast_1d(np.asarray(eps, dtype=np.float64))
    bad = ~np.isfinite(arr) | (arr < 0)
    if bad.any():
        raise InvalidRadiusError(f"eps must be finite and >= 0, got {arr[bad][0]!r}")
    return arr


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
        The bound behind each method's radii.
    timings : dict of str to float
        Seconds: ``"bound:<method>"`` for every bound computed here, ``"radii"`` for the forward
        passes and radii of this call.
    resumed : int
        Number of inputs read back from a records file instead of computed.
    tolerance : float
        Extra absolute tolerance subtracted from every logit difference (besides float64 rounding).
    """

    index: np.ndarray
    label: np.ndarray
    prediction: np.ndarray
    margin: np.ndarray
    logit_error: np.ndarray
    radii: dict[str, np.ndarray]
    norm: str
    input_dim: int
    bounds: dict[str, LipschitzBound] = field(repr=False)
    timings: dict[str, float] = field(default_factory=dict)
    resumed: int = 0
    tolerance: float = 0.0

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


# ---------------------------------------------------------------------------------- numerics
@dataclass(frozen=True)
class _Layer:
    weight: torch.Tensor
    bias: torch.Tensor
    activation: Any
    row_abs: float      # ||W||_inf: max row sum of |W|
    row_norm: float     # max row 2-norm of W
    bias_abs: float     # max |b|
    gamma: float        # 2 * gamma_{n+1}, n the inner dimension
    slope: float        # max |slope| of the activation after this layer (0 for the last layer)
    exact_activation: bool


_EXACT = ("relu", "relu6", "hardtanh")


def _layers(net: Network) -> list[_Layer]:
    out = []
    for k, (w, b) in enumerate(zip(net.weights, net.biases)):
        n = w.shape[1] + 1
        gamma = 2 * n * UNIT_ROUNDOFF / (1 - n * UNIT_ROUNDOFF)
        act = net.activations[k] if k < len(net.activations) else None
        slope = 0.0 if act is None else float(torch.maximum(net.alphas[k].abs(), net.betas[k].abs()).max())
        exact = act is None or act.name.split("(")[0] in _EXACT
        out.append(_Layer(w, b, act, float(w.abs().sum(1).max()), float(w.norm(dim=1).max()),
                          float(b.abs().max()) if b.numel() else 0.0, gamma, slope, exact))
    return out


def logit_error_bound(layers: list[_Layer], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 logits of a flat batch and a bound on the rounding error of every logit.

    Standard error analysis (Higham, Thm 3.5): |fl(W a + b) - (W a + b)| <= gamma_{n+1} (|W| |a| + |b|),
    and sum_j |W_ij| |a_j| <= ||W_i||_2 ||a||_2.  With E_{k-1} the bound on the error carried in a,
    the pre-activation error is at most ||W||_inf E_{k-1} + gamma (max_i ||W_i|| ||a||_2 + max |b|),
    the activation multiplies it by its largest |slope| and adds its own rounding
    (16 u (||phi(z)|| + |slope| ||z||), 0 for ReLU-like maps).  ``gamma`` is doubled for safety.
    """
    a = x
    a_norm = x.norm(dim=1)
    err = torch.zeros(x.shape[0], dtype=torch.float64)
    for layer in layers:
        z = a @ layer.weight.T + layer.bias
        err = layer.row_abs * err + layer.gamma * (layer.row_norm * a_norm + layer.bias_abs)
        if layer.activation is None:
            return z, err
        a = layer.activation(z)
        a_norm = a.norm(dim=1)
        err = layer.slope * err
        if not layer.exact_activation:
            err = err + 16 * UNIT_ROUNDOFF * (a_norm + layer.slope * z.norm(dim=1))
    return a, err  # pragma: no cover - a network always ends with an affine map


def pairwise_constants(bound: LipschitzBound, outputs: int) -> np.ndarray:
    """K x K bounds on Lip(f_i - f_j); sqrt(2) Lip(f) (as ||e_i - e_j|| = sqrt(2)) when the method
    gives no margin bounds."""
    try:
        return bound.pairwise()
    except ValueError:
        out = np.full((outputs, outputs), math.sqrt(2) * bound.value * (1 + 1e-12))
        np.fill_diagonal(out, 0.0)
        return out


def pair_radii(logits: np.ndarray, err: np.ndarray, labels: np.ndarray, pair: np.ndarray,
               scale: float) -> np.ndarray:
    """Radius (L2 radius times ``scale``) that each pair (y, j) proves, shape (N, K); inf at j = y.

    A pair (y, j) certifies (f_y - f_j - tol_j) / L_yj with tol_j = 2 err + 2 u |f_y - f_j|; a pair
    with L_yj = 0 and a positive margin imposes no limit.  Radii are shrunk by 8 ulps so that every
    rounding in this computation errs towards a smaller radius; a misclassified input gets 0.
    """
    rows = np.arange(labels.shape[0])
    fy = logits[rows, labels][:, None]
    diff = fy - logits
    low = diff - 2 * err[:, None] - 2 * UNIT_ROUNDOFF * np.abs(diff)
    lip = pair[labels]
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(lip > 0, low / lip, np.where(low > 0, np.inf, 0.0))
    r[rows, labels] = np.inf
    r[np.isnan(r)] = 0.0
    r = np.clip(r, 0.0, None) * scale * (1 - 8 * UNIT_ROUNDOFF)
    return np.where((logits.argmax(axis=1) == labels)[:, None], r, 0.0)


def radii_from_margins(logits: np.ndarray, err: np.ndarray, labels: np.ndarray, pair: np.ndarray,
                       scale: float) -> np.ndarray:
    """Certified radii (L2 radius times ``scale``) of a batch: the smallest :func:`pair_radii` of each input."""
    return pair_radii(logits, err, labels, pair, scale).min(axis=1)


# ---------------------------------------------------------------------------------- records
def _sha256_arrays(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        c = np.ascontiguousarray(a)
        h.update(str((c.dtype.str, c.shape)).encode())
        h.update(c.tobytes())
    return h.hexdigest()


def network_hash(net: Network) -> str:
    """sha256 over the float64 weights, biases, slopes and activation names of a network."""
    arrays = [t.numpy() for t in (*net.weights, *net.biases, *net.alphas, *net.betas)]
    h = hashlib.sha256(_sha256_arrays(*arrays).encode())
    h.update(repr((net.activation_names, net.input_shape)).encode())
    return h.hexdigest()


class _Records:
    """A JSON-lines file: one header (the run's fingerprint), then one line per finished input."""

    def __init__(self, path: Path, header: dict[str, Any], resume: bool, batch_size: int) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if path.exists() and path.stat().st_size > 0:
            if not resume:
                raise ResumeError(f"records file {path} exists; resume the run (resume=True, --resume) "
                                  "or choose another output")
            self._read(header, batch_size)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(json.dumps({"record": "header", **header}) + "\n")

    def _read(self, header: dict[str, Any], batch_size: int) -> None:
        good_end = 0
        with open(self.path, "rb") as fh:
            first = fh.readline()
            try:
                old = json.loads(first)
            except ValueError:
                raise ResumeError(f"{self.path} does not start with a lipcert records header") from None
            if not first.endswith(b"\n") or old.get("record") != "header":
                raise ResumeError(f"{self.path} does not start with a lipcert records header")
            diff = sorted(k for k in set(header) | set(old) - {"record"} if old.get(k) != header.get(k))
            if diff:
                raise ResumeError(f"{self.path} belongs to another run: {', '.join(diff)} differ "
                                  "(same model, data, norm, methods and bounds are needed to resume)")
            good_end = fh.tell()
            ends = []
            for line in fh:
                if not line.endswith(b"\n"):
                    break
                try:
                    row = json.loads(line)
                except ValueError:
                    break
                self.rows.append(row)
                ends.append(good_end := good_end + len(line))
        keep = len(self.rows) // batch_size * batch_size  # redo a partial batch: same batches, same bits
        self.rows = self.rows[:keep]
        end = ends[keep - 1] if keep else len(first)
        with open(self.path, "r+b") as fh:
            fh.truncate(end)

    def append(self, rows: list[dict[str, Any]]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r) + "\n" for r in rows))
            fh.flush()
            os.fsync(fh.fileno())


# ---------------------------------------------------------------------------------- the verb
def _bounds(net: Network, method: str | Sequence[str],
            bound: LipschitzBound | Sequence[LipschitzBound] | Mapping[str, LipschitzBound] | None,
            ) -> tuple[dict[str, LipschitzBound], dict[str, float]]:
    timings: dict[str, float] = {}
    if bound is not None:
        if isinstance(bound, LipschitzBound):
            return {bound.method: bound}, timings
        if isinstance(bound, Mapping):
            return dict(bound), timings
        return {b.method: b for b in bound}, timings
    names = [method] if isinstance(method, str) else list(method)
    names = [m.strip() for item in names for m in item.split(",") if m.strip()]
    out = {}
    for name in dict.fromkeys(names):
        # optimized: also every margin direction e_i - e_j, warm-started from the full-vector optimum
        b = lipschitz(net, name, options={"pairs": True} if name == "optimized" else None)
        out[name] = b
        timings[f"bound:{name}"] = b.seconds
    return out, timings


def _local_options(local: Literal[True] | Sequence[Any] | Mapping[str, Any], rules: Sequence[Any]) -> dict[str, Any]:
    """Keyword arguments of :func:`lipcert.bounds.local.local_radii` from certify's ``local`` argument."""
    if local is True:
        return {"rules": tuple(rules)}
    if not isinstance(local, Mapping):
        return {"rules": tuple(local)}
    unknown = sorted(set(local) - {"rules", "iterations", "seconds"})
    if unknown:
        raise InvalidArgumentError(f"unknown local option(s) {', '.join(map(repr, unknown))}; "
                                   "known: 'rules', 'iterations', 'seconds'")
    budget = check_options({k: v for k, v in local.items() if k != "rules"})  # the optimizer's own checks
    return {"rules": tuple(local.get("rules", rules)), **budget}


def _as_inputs(net: Network, x: Any, y: Any, index: Any) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    inputs, labels = checked_batch(x, y, net.input_shape, net.output_dim)
    flat = inputs.reshape(inputs.shape[0], -1)
    idx = np.arange(flat.shape[0], dtype=np.int64) if index is None else np.asarray(index, dtype=np.int64)
    if idx.shape != labels.shape:
        raise ShapeMismatchError(f"index must have shape {labels.shape}, got {idx.shape}")
    return flat, labels, idx


def certify(
    net: Network,
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
) -> Certification:
    """Certified radius of every input: its prediction, margin and the radius proven by each bound.

    Parameters
    ----------
    net : Network
        The classifier; radii refer to its input space (raw inputs when it carries its normalization).
    x : array (N, *net.input_shape) or (N, d)
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
        Also certify with per-input local Lipschitz constants (:mod:`lipcert.bounds.local`): an
        extra method ``"local"``, never below the best global radius; timings ``"local"`` (total)
        and ``"local_per_input"``.  Costs several local bounds per input.  A sequence of rules
        (``Rule`` or names like ``"gcs(1)"``) replaces the default local rule set; a mapping sets
        any of ``rules``, ``iterations`` (of the optimized margins, 0 = off) and ``seconds`` (their
        budget per input), see :func:`lipcert.bounds.local.local_radius`.

    Returns
    -------
    Certification

    Notes
    -----
    The margin f_y - f_j is computed in float64 and reduced by twice a rigorous bound on the
    logits' rounding error (:func:`logit_error_bound`) plus ``tolerance``, so a reported radius is
    never larger than what the bound proves for the exact network.
    """
    norm_name = parse_norm(norm)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise InvalidArgumentError(f"tolerance must be finite and >= 0, got {tolerance!r}")
    flat, labels, idx = _as_inputs(net, x, y, index)
    bounds, timings = _bounds(net, method, bound)
    pairs = {}
    for name, b in bounds.items():
        p = pairwise_constants(b, net.output_dim)
        if p.shape != (net.output_dim, net.output_dim):
            raise ShapeMismatchError(f"bound {name!r} has {p.shape[0]} outputs, the network {net.output_dim}")
        pairs[name] = p
    scale = 1.0 if norm_name == "2" else 1.0 / math.sqrt(net.input_dim)
    n = flat.shape[0]
    if local:
        from .bounds.local import LOCAL_METHOD, LOCAL_RULES, local_method_bound, local_radii

        local_options = _local_options(local, LOCAL_RULES)
        floor = np.minimum.reduce(list(pairs.values()))
        bounds[LOCAL_METHOD] = local_method_bound(bounds)
        local_seconds = 0.0

    done: list[dict[str, np.ndarray]] = []
    store = None
    resumed = 0
    if records is not None:
        header = {"version": RECORDS_VERSION, "network": network_hash(net), "n": n,
                  "data": _sha256_arrays(flat.numpy(), labels, idx), "norm": norm_name,
                  "tolerance": tolerance, "bounds": {m: b.value for m, b in bounds.items()}}
        store = _Records(Path(records), header, resume, batch_size)
        resumed = len(store.rows)
        if resumed:
            done.append(_columns(store.rows, list(bounds)))
            if not np.array_equal(done[0]["index"], idx[:resumed]):
                raise ResumeError(f"{records}: recorded indices do not match the inputs")

    layers = _layers(net)
    start = time.perf_counter()
    from tqdm.auto import tqdm

    bar = tqdm(total=n, initial=resumed, unit="input", desc="certify",
               disable=None if progress is None else not progress, leave=False)
    try:
        for lo in range(resumed, n, batch_size):
            hi = min(lo + batch_size, n)
            xb = flat[lo:hi].to(torch.float64)
            with torch.no_grad():
                logits_t, err_t = logit_error_bound(layers, xb)
            logits, err = logits_t.numpy(), err_t.numpy() + tolerance
            lab = labels[lo:hi]
            others = np.where(np.eye(logits.shape[1], dtype=bool)[lab], -np.inf, logits)
            batch = {"index": idx[lo:hi], "label": lab, "prediction": logits.argmax(axis=1),
                     "margin": logits[np.arange(hi - lo), lab] - others.max(axis=1), "logit_error": err}
            batch.update({f"radius:{m}": radii_from_margins(logits, err, lab, p, scale) for m, p in pairs.items()})
            if local:
                t_local = time.perf_counter()
                best = np.maximum.reduce([batch[f"radius:{m}"] for m in pairs])
                batch[f"radius:{LOCAL_METHOD}"] = local_radii(net, xb, lab, logits, err, floor, norm_name, best,
                                                              **local_options)[0]
                local_seconds += time.perf_counter() - t_local
            if store is not None:
                store.append(_rows(batch, list(bounds)))
            done.append(batch)
            bar.update(hi - lo)
    finally:
        bar.close()
    timings["radii"] = time.perf_counter() - start
    if local:
        timings.update({"local": local_seconds, "local_per_input": local_seconds / max(n - resumed, 1)})

    def col(key: str, dtype: type) -> np.ndarray:
        return np.concatenate([d[key] for d in done]).astype(dtype) if done else np.zeros(0, dtype)

    return Certification(
        index=col("index", np.int64), label=col("label", np.int64), prediction=col("prediction", np.int64),
        margin=col("margin", np.float64), logit_error=col("logit_error", np.float64),
        radii={m: col(f"radius:{m}", np.float64) for m in bounds},
        norm=norm_name, input_dim=net.input_dim, bounds=bounds, timings=timings, resumed=resumed,
        tolerance=float(tolerance))


def _rows(batch: dict[str, np.ndarray], methods: list[str]) -> list[dict[str, Any]]:
    """Per-input JSON records of a batch (floats round-trip exactly through JSON)."""
    cols = {k: v.tolist() for k, v in batch.items()}
    return [{"index": cols["index"][i], "label": cols["label"][i], "prediction": cols["prediction"][i],
             "margin": cols["margin"][i], "logit_error": cols["logit_error"][i],
             "radius": {m: cols[f"radius:{m}"][i] for m in methods}} for i in range(len(cols["index"]))]


def _columns(rows: list[dict[str, Any]], methods: list[str]) -> dict[str, np.ndarray]:
    """The arrays of records read back from a records file."""
    out = {k: np.array([r[k] for r in rows]) for k in ("index", "label", "prediction", "margin", "logit_error")}
    out.update({f"radius:{m}": np.array([r["radius"][m] for r in rows], dtype=np.float64) for m in methods})
    return out
