"""Certified local radii: the largest radius whose own local constants prove the prediction.

:func:`local_radius` bisects r (geometrically, to a relative tolerance ``rtol``) for the largest r
whose own anchored constants (:func:`lipcert.local.bound.local_bound`; for a residual graph
:func:`lipcert.local.graph.model_local_bound`) prove
margin_j - tol_j > L_yj(x, r) r_2 for every j, optimizing the margins the closed forms leave short
(:func:`lipcert.local.margin.optimized_margin`); only radii checked that way are returned, and never
less than the global radius.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..bounds.rules import Rule
from ..graph import GraphNetwork
from ..graph_chain import GraphChain
from ..network import Network
from ..norms import parse_norm, radius_scale
from ..radii import pair_radii
from .bound import LOCAL_DAMPINGS, LOCAL_RULES, Intervals
from .graph import chain_of, local_model, model_local_bound
from .margin import DEFAULT_ITERATIONS, optimized_margin

LOCAL_METHOD = "local"
"""Name of the local radii among a :class:`~lipcert.Certification`'s methods."""
DEFAULT_RTOL = 0.01
"""Relative tolerance of the bisection of :func:`local_radius`."""
_SHORT = 1 - 1e-6
"""An optimized margin constant stops this close below the value that proves the radius tried."""


@dataclass(frozen=True)
class LocalRadius:
    """Certified local radius of one input.

    Attributes
    ----------
    radius : float
        Certified radius (in the norm of the search, input units): the largest checked r, or the
        starting (global) radius when no larger r was proven.
    upper : float
        The smallest r tried that the local constants did not prove (inf if none failed).
    evaluations : int
        Number of local bounds computed.
    seconds : float
    """

    radius: float
    upper: float
    evaluations: int
    seconds: float


def local_radius(net: Network | GraphNetwork | GraphChain, x: np.ndarray | torch.Tensor, label: int, logits: np.ndarray, error: float,
                 floor: np.ndarray, norm: str | float = 2, *, start: float = 0.0, rtol: float = DEFAULT_RTOL,
                 rules: Sequence[Rule | str] = LOCAL_RULES, dampings: Sequence[str] = LOCAL_DAMPINGS,
                 intervals: Intervals | None = None, iterations: int = DEFAULT_ITERATIONS,
                 seconds: float | None = None) -> LocalRadius:
    """Largest radius whose own local constants prove the prediction, by geometric bisection.

    Parameters
    ----------
    net : Network, GraphNetwork or GraphChain
        A chain, or a residual graph (bounded through its chain form, :mod:`lipcert.local.graph`).
    x : array (d,)
        The input.
    label : int
        Its label (a misclassified input gets ``start``, which should then be 0).
    logits : array (K,)
        Float64 logits of x.
    error : float
        Bound on the error of every logit (see :func:`lipcert.rounding.logit_error_bound`).
    floor : array (K, K)
        Global pairwise constants, valid everywhere; each pair uses min(local, global).
    norm : 2 or "inf"
    start : float
        A radius already proven (the global one); the result is never smaller.
    rtol : float
        Relative tolerance of the search: it stops when upper <= radius (1 + rtol).
    rules : sequence of Rule or str
    dampings : sequence of str
    intervals : callable, optional
        ``intervals(x, r)``: sound pre-activation bounds over the ball from another method (e.g.
        :func:`lipcert.adapters.lirpa.lirpa_intervals`), intersected with lipcert's in every local bound
        (chains only: :class:`~lipcert.errors.GraphNetworkError` for a graph).
    iterations : int
        Where the closed-form constants do not prove a radius r, the failing margins get
        multipliers optimized for their direction (:func:`optimized_margin`, this many L-BFGS
        iterations each, smallest radius first, until one stays short); 0 turns that off.
    seconds : float, optional
        Wall-time budget of those optimizations for this input (None: no limit); the closed-form
        search always runs to ``rtol``.

    Returns
    -------
    LocalRadius

    Notes
    -----
    A radius r is accepted when min_j (margin_j - tol_j) / L_yj(x, r) >= r (scaled by 1/sqrt(d)
    for L-infinity), with L(x, r) from :func:`local_bound` (``anchored=True``: f_y - f_j moves by at
    most L_yj ||x' - x|| from its value at x) on the ball of radius r itself, so
    every accepted r is proven whether or not L grows with r.  The search starts at ``start``:
    rho = the radius its constants prove; if rho <= start nothing is tried.  Otherwise it
    bisects [start, rho] in log scale.  Without optimization a proven mid-point m also lowers the
    upper end to the radius its constants prove (a heuristic cut that assumes L grows with r; it
    never affects soundness); with it the cut is skipped, since an optimized margin stops at the
    constant that proves m and says nothing about larger radii.
    """
    t0 = time.perf_counter()
    model = local_model(net, "local_radius")  # dense weight matrices (operator layers densified)
    chain = chain_of(model)
    norm_name = parse_norm(norm)
    scale = radius_scale(norm_name, chain.input_dim)
    logit_row, err_row, lab = np.asarray(logits, np.float64)[None], np.array([error], np.float64), np.array([label])
    centre = torch.as_tensor(np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x),
                             dtype=torch.float64).reshape(-1)
    calls = 0
    deadline = None if seconds is None else t0 + seconds

    def proven(r: float) -> float:
        nonlocal calls
        calls += 1
        known = None if intervals is None else intervals(centre, r)
        lb = model_local_bound(model, centre, r, norm_name, rules=rules, dampings=dampings, known=known, anchored=True)
        pair = np.minimum(lb.pairwise(), floor)
        radii = pair_radii(logit_row, err_row, lab, pair, scale)[0]
        for j in np.argsort(radii) if iterations > 0 else ():
            if radii[j] >= r or radii[j] <= 0:  # proven, or a margin no constant can save
                break
            c = np.zeros(len(radii))
            c[label], c[j] = 1.0, -1.0
            if deadline is not None and time.perf_counter() > deadline:
                break
            value = optimized_margin(chain, lb, c, iterations=iterations, deadline=deadline,
                                     target=pair[label, j] * radii[j] / r * _SHORT)
            pair[label, j] = pair[j, label] = min(pair[label, j], value)
            radii = pair_radii(logit_row, err_row, lab, pair, scale)[0]
            if radii[j] < r:  # this margin still fails at r
                break
        return float(radii.min())

    lo = float(start)
    if lo <= 0 or not math.isfinite(lo):
        return LocalRadius(lo, math.inf, 0, time.perf_counter() - t0)
    hi = proven(lo)
    if hi <= lo:
        return LocalRadius(lo, hi, calls, time.perf_counter() - t0)
    if not math.isfinite(hi):  # f is constant on the start ball: its constants say nothing beyond it
        hi = 2 * lo
    upper = math.inf
    if proven(hi) >= hi:
        return LocalRadius(hi, upper, calls, time.perf_counter() - t0)
    upper = hi
    while hi > lo * (1 + rtol):
        mid = math.sqrt(lo * hi)
        rho = proven(mid)
        if rho >= mid:
            lo, hi = mid, (hi if iterations > 0 else min(hi, rho))
        else:
            hi = upper = mid
    return LocalRadius(lo, upper, calls, time.perf_counter() - t0)


def local_radii(net: Network | GraphNetwork, x: torch.Tensor, labels: np.ndarray, logits: np.ndarray, errors: np.ndarray,
                floor: np.ndarray, norm: str | float, start: np.ndarray, *, rtol: float = DEFAULT_RTOL,
                rules: Sequence[Rule | str] = LOCAL_RULES, dampings: Sequence[str] = LOCAL_DAMPINGS,
                intervals: Intervals | None = None, iterations: int = DEFAULT_ITERATIONS,
                seconds: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`local_radius` of a batch: radii (0 for misclassified inputs) and seconds per input."""
    model = local_model(net, "local_radii")  # densified (a graph: its chain form built) once here, not per input
    radii, spent = np.array(start, dtype=np.float64), np.zeros(len(labels))
    predicted = np.asarray(logits).argmax(axis=1)
    for i in range(len(labels)):
        if predicted[i] != labels[i]:
            continue
        res = local_radius(model, x[i], int(labels[i]), logits[i], float(errors[i]), floor, norm, start=float(start[i]),
                           rtol=rtol, rules=rules, dampings=dampings, intervals=intervals, iterations=iterations,
                           seconds=seconds)
        radii[i], spent[i] = max(res.radius, float(start[i])), res.seconds
    return radii, spent
