"""``lipcert.lipschitz``: one entry point, one result type, the method as a value."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch

from ..errors import InfeasibleCertificateError, UnknownMethodError
from ..network import Network
from . import closed_form
from .recursion import RecursionResult, replay
from .result import Gram, LipschitzBound
from .rules import DEFAULT_RULE_SET, Rule, parse_rule

METHODS: dict[str, str] = {
    "naive": "product of spectral norms times the largest slope",
    "eclipse-fast": "ECLipsE-Fast (Xu & Sivaranjani 2024) = SN(1)",
    "sn": "spectral rule SN(c), default c=1",
    "gc": "Gershgorin rule GC(c), default c=1.99",
    "shift": "Weyl shift rule Shift(c), default c=1.5",
    "gcs": "rescaled spectral rule GCs(c), default c=1.5",
    "greedy": "per-layer choice among the default rule set",
    "combined": "minimum over SN(1), GC(1.5,1.7,1.99), Shift(1.3,1.5,1.7), GCs(1,1.5) and naive",
    "eclipse": "ECLipsE: one small SDP per layer (needs the sdp extra)",
    "lipsdp-neuron": "LipSDP-Neuron SDP (needs the sdp extra)",
    "lipsdp-layer": "LipSDP-Layer SDP (needs the sdp extra)",
    "optimized": "combined, then L-BFGS on the Theorem 1 multipliers towards LipSDP-Neuron (options: iterations, "
                 "seconds, direction, pairs)",
}
SDP_METHODS = ("eclipse", "lipsdp-neuron", "lipsdp-layer")


def _on(net: Network, device: torch.device, dtype: torch.dtype) -> tuple[list[torch.Tensor],
                                                                         list[tuple[torch.Tensor, torch.Tensor]]]:
    """The network's weights and per-neuron slopes on ``device`` in ``dtype``."""
    return ([w.to(device, dtype) for w in net.weights],
            [(a.to(device, dtype), b.to(device, dtype)) for a, b in net.slopes()])


def _resolve(method: str, c: float | None) -> tuple[str, Rule | None]:
    name = method.strip().lower()
    base = name.split("(")[0]
    if base in ("sn", "gc", "shift", "gcs"):
        rule = parse_rule(name, c)
        return rule.name, rule
    if name in ("eclipse-fast", "eclipse_fast", "ecl-fast"):
        return "eclipse-fast", Rule("sn", 1.0)
    if name.replace("_", "-") in METHODS:
        return name.replace("_", "-"), None
    raise UnknownMethodError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")


def lipschitz(
    net: Network,
    method: str = "combined",
    *,
    c: float | None = None,
    rules: Sequence[Rule | str] | None = None,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device | None = None,
    solver: str | None = None,
    eps: float | None = None,
    options: Mapping[str, Any] | None = None,
) -> LipschitzBound:
    """Upper bound on the L2 Lipschitz constant of ``net``.

    Parameters
    ----------
    net : Network
        The network; the bound refers to its input space (raw inputs when it carries its
        normalization) and holds for every bias and every activation in its slope class.
    method : str
        One of :data:`METHODS` (``"gc(1.7)"`` style names set the rule parameter inline).
    c : float, optional
        Parameter of a single rule (``sn``, ``gc``, ``shift``, ``gcs``).
    rules : sequence, optional
        Rule set for ``combined`` and ``greedy`` (default: math.md section 4.3's nine rules).
    dtype : torch.dtype
        float64 (default) or float32 for the closed-form recursions (the expensive search: Gram
        matrices, eigenvalue estimates, every rule's Cholesky tests).  A float32 run then replays
        its best certificate's multipliers in float64 (one pass of Gram matrices, Cholesky
        factors and solves, no eigenvalues) and reports that value, so every reported number is
        a float64 certificate (math.md section 5; a float32 value alone was measured 3 % below
        what its own multipliers certify on a 20-layer SiLU net).  ``per_rule`` and the margin
        bounds then hold the replayed certificate only; ``extras["float32_estimates"]`` has the
        float32 values of every rule.  If the replay fails a Cholesky test, the method is rerun
        in float64 (said in ``status``).  The naive product, the SDP methods and ``optimized``
        always run in float64.
    device : str or torch.device, optional
        Where to compute (``"cuda"`` when available); default CPU.
    solver, eps : optional
        SDP methods only: ``"SCS"`` or ``"CLARABEL"`` and the solver tolerance.
    options : mapping, optional
        ``combined``: ``prune`` (``"auto"``, None or a factor; see
        :func:`lipcert.bounds.closed_form.combined`) and ``beam`` (at most this many passes besides
        SN(1) survive a layer: faster, looser; benchmarks/results/pruning.md).
        ``optimized`` (always float64): ``iterations`` (default 100), ``seconds`` (time
        budget), ``direction`` (optimize the bound on Lip(c^T f), read it with ``along(c)``),
        ``pairs`` (also optimize every margin e_i - e_j, for ``pairwise()``), ``pair_iterations``,
        ``progress``; see :func:`lipcert.bounds.optimize.optimized`.

    Returns
    -------
    LipschitzBound
        ``value`` >= Lip_2(f); ``pairwise()`` and ``along(c)`` give margin constants.

    Notes
    -----
    The closed forms are Theorem 1 of Syed & Hu (2025, arXiv:2503.14297): with M_0 = I,
    Gamma_k = W_k M_{k-1}^{-1} W_k^T and M_k = 2 Lambda_k - Lambda_k Gamma_k Lambda_k > 0,
    Lip(f) <= ||W_L M_{L-1}^{-1} W_L^T||^{1/2}.  Each rule picks a diagonal Lambda_k in
    closed form; ECLipsE-Fast is Lambda_k = I / lambda_max(Gamma_k).
    """
    name, rule = _resolve(method, c)
    if c is not None and rule is None:
        raise UnknownMethodError(f"method {name!r} takes no parameter c")
    if (solver is not None or eps is not None) and name not in SDP_METHODS:
        raise UnknownMethodError(f"solver and eps apply to the SDP methods {', '.join(SDP_METHODS)}, not {name!r}")
    if options is not None and name not in ("optimized", "combined"):
        raise UnknownMethodError(f"options apply to the methods 'optimized' and 'combined', not {name!r}")
    if dtype not in (torch.float64, torch.float32):
        raise TypeError(f"dtype must be torch.float64 or torch.float32, got {dtype}")
    rule_set = tuple(parse_rule(r) if isinstance(r, str) else r for r in (rules or DEFAULT_RULE_SET))
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if name in SDP_METHODS + ("optimized", "naive"):  # solvers, optimizer, spectral norms: float64 certificates
        dtype = torch.float64
    weights, slopes = _on(net, dev, dtype)

    start = time.perf_counter()
    results: dict[str, RecursionResult]
    if name == "naive":
        results = {"naive": closed_form.naive(weights, slopes)}
    elif rule is not None:
        results = {name: closed_form.single_rule(weights, slopes, rule)}
    elif name == "combined":
        results = closed_form.combined(weights, slopes, rule_set, **closed_form.check_combined_options(options or {}))
    elif name == "greedy":
        results = {"greedy": closed_form.greedy(weights, slopes, rule_set)}
    elif name == "optimized":
        from . import optimize

        results = optimize.optimized(weights, slopes, rule_set, options)
    else:
        from . import sdp

        results = {name: sdp.solve(name, weights, slopes, solver=solver, tolerance=eps)}
    estimates: dict[str, float] = {}
    if dtype == torch.float32:
        estimates = {k: r.value for k, r in results.items()}
        best = min(estimates, key=estimates.__getitem__)
        weights, slopes = _on(net, dev, torch.float64)  # the net's own weights, not their float32 rounding
        try:
            checked = (closed_form.naive(weights, slopes) if best == "naive" else
                       replay(weights, closed_form.closed_form_slopes(slopes), results[best].multipliers,
                              results[best].labels))
        except InfeasibleCertificateError as err:
            redo = lipschitz(net, method, c=c, rules=rules, device=dev, options=options)
            return replace(redo, seconds=time.perf_counter() - start,
                           status=f"float32 certificate failed its float64 check ({err}); recomputed in float64"
                                  + ("" if redo.status == "ok" else f"; {redo.status}"),
                           extras={**redo.extras, "float32_estimates": estimates})
        checked.extras.update(results[best].extras)
        results = {best: checked}
    seconds = time.perf_counter() - start

    values = {k: r.value for k, r in results.items()}
    best = min(values, key=values.__getitem__)
    winner = results[best]
    notes = [f"{k}: {n}" for k, r in results.items() for n in r.notes if "constant neurons" not in n]
    own = {k: (rule.name if rule is not None else k) for k in results}
    fallbacks = sorted({f"{k}: layer {i + 1} fell back to {lab}" for k, r in results.items()
                        for i, lab in enumerate(r.labels) if name != "greedy" and lab != own[k]})
    status = "ok" if not (notes or fallbacks) else "; ".join(fallbacks + notes)
    grams = {k: Gram(r.gram.double(), r.log_scale) for k, r in results.items()}
    used_slopes = (closed_form.closed_form_slopes(slopes) if name not in SDP_METHODS + ("naive",) else slopes)
    return LipschitzBound(
        value=values[best],
        method=name,
        per_rule=values,
        rule=best,
        multipliers=tuple(m.detach().double().cpu() for m in winner.multipliers),
        slopes=tuple((a.double().cpu(), b.double().cpu()) for a, b in used_slopes),
        seconds=seconds,
        status=status,
        grams=grams,
        extras={"dtype": str(dtype).replace("torch.", ""), "device": str(dev), **winner.extras,
                **({"float32_estimates": estimates} if estimates else {}),
                **(results["optimized"].extras if name == "optimized" else {}), "layer_rules": list(winner.labels)},
    )
