"""``lipcert.lipschitz``: the bound methods as a registry, each with its own checked options.

A method is one :class:`Method` entry of :data:`REGISTRY`: its description, the options it takes
(each with a default and a check), the function that runs it, whether it always runs in
float64, and whether it gives margin bounds.  :func:`resolve` turns a method name and an options
mapping into a :class:`MethodCall` (every option checked, defaults filled in); :func:`lipschitz`
runs that call, and a float32 run is replayed in float64 by :func:`replay_in_float64`, which
reruns the same call when the replay fails, so no option can be lost on the way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..errors import InfeasibleCertificateError, InvalidArgumentError, InvalidOptionError, MemoryBudgetError
from ..errors import UnknownMethodError
from ..graph import AnyNetwork, GraphNetwork
from ..network import Network, require_network
from ..operators import DEFAULT_MAX_DENSE_BYTES
from . import abs_layer, closed_form, conv_closed_form, graph, matrix_free, optimize, sdp
from .recursion import RecursionResult, replay
from .result import Gram, LipschitzBound
from .rules import DEFAULT_C, DEFAULT_RULE_SET, InvalidParameterError, Rule, parse_rule
from .workspace import choose_path, graph_path

Weights = list[torch.Tensor]
Slopes = list[tuple[torch.Tensor, torch.Tensor]]
Runner = Callable[[Weights, Slopes, Mapping[str, Any]], RecursionResult | dict[str, RecursionResult]]


@dataclass(frozen=True)
class Option:
    """One option of a method: its default and the check that validates and normalizes a given value
    (raising :class:`~lipcert.bounds.rules.InvalidParameterError` or another named error)."""

    default: Any
    check: Callable[[Any], Any]


@dataclass(frozen=True)
class Method:
    """One bound method of :data:`REGISTRY`.

    Attributes
    ----------
    name, description : str
        The registry key and the one-line description :data:`METHODS` lists.
    options : mapping of str to Option
        Every option the method takes; any other name is an :class:`~lipcert.errors.InvalidOptionError`.
    run : callable
        ``run(weights, slopes, options)`` on the network's weights and exact slopes (one dtype,
        one device) with checked options; returns one certificate or several named ones (the
        bound is their minimum).
    float64_only : bool
        Runs in float64 whatever ``dtype`` asks (solvers, the optimizer, the spectral norms).
    margins : bool
        Its certificates carry the K x K matrices behind :meth:`LipschitzBound.pairwise` and ``along``
        (true of every method here: each one ends in Theorem 1's recursion).
    rule : callable, optional
        Single-rule methods: the rule for the given options.  A layer labelled otherwise fell back.
    mixes_rules : bool
        Picks a rule per layer (greedy), so layer labels that differ are no fallbacks.
    relaxed_slopes : bool
        Certifies with :func:`~lipcert.bounds.closed_form.closed_form_slopes` (alpha >= 0 relaxed to 0).
    """

    name: str
    description: str
    options: Mapping[str, Option]
    run: Runner
    float64_only: bool = False
    margins: bool = True
    rule: Callable[[Mapping[str, Any]], Rule] | None = None
    mixes_rules: bool = False
    relaxed_slopes: bool = True


@dataclass(frozen=True)
class MethodCall:
    """A method with checked options (every option of the method, defaults filled in)."""

    method: Method
    options: Mapping[str, Any]

    @property
    def name(self) -> str:
        """The name the bound reports: a parameterized rule with its parameter (``"gc(1.99)"``)."""
        rule = self.method.rule
        return rule(self.options).name if rule is not None and "c" in self.method.options else self.method.name

    def run(self, weights: Weights, slopes: Slopes) -> dict[str, RecursionResult]:
        """Every certificate of the method by name (a single one under :attr:`name`)."""
        out = self.method.run(weights, slopes, self.options)
        return out if isinstance(out, dict) else {self.name: out}


# ------------------------------------------------------------------------------ option checks
def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidParameterError(f"{name} must be a number, got {value!r}")
    return float(value)


def _rule_parameter(kind: str) -> Callable[[Any], float]:
    """Check of a rule's parameter c: a number in the rule's valid range."""
    return lambda value: Rule(kind, _number("c", value)).c


def _rule_set(value: Any) -> tuple[Rule, ...]:
    """A non-empty sequence of :class:`Rule` objects or rule names (``"gc(1.7)"``) to a tuple of rules."""
    if isinstance(value, str | Rule) or not isinstance(value, Iterable):
        raise InvalidParameterError(f"rules must be a sequence of rules or rule names like 'gc(1.7)', got {value!r}")
    rules = tuple(parse_rule(r) if isinstance(r, str) else r for r in value)
    if not rules or not all(isinstance(r, Rule) for r in rules):
        raise InvalidParameterError(f"rules must be a non-empty sequence of rules or rule names, got {value!r}")
    return rules


def _prune(value: Any) -> float | str | None:
    if value not in ("auto", None) and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
        raise InvalidParameterError(f"prune must be 'auto', None or a number >= 0, got {value!r}")
    return value


def _beam(value: Any) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidParameterError(f"beam must be None or an integer >= 1, got {value!r}")
    return value


def _optimizer_option(name: str) -> Callable[[Any], Any]:
    """The optimizer's own check (:func:`lipcert.bounds.optimize.check_options`) of one option."""
    return lambda value: optimize.check_options({name: value})[name]


RULES = Option(DEFAULT_RULE_SET, _rule_set)
OPTIMIZER_OPTIONS = {
    "iterations": Option(optimize.DEFAULT_ITERATIONS, _optimizer_option("iterations")),
    "seconds": Option(None, _optimizer_option("seconds")),
    "direction": Option(None, _optimizer_option("direction")),
    "pairs": Option(False, _optimizer_option("pairs")),
    "pair_iterations": Option(optimize.DEFAULT_PAIR_ITERATIONS, _optimizer_option("pair_iterations")),
    "progress": Option(None, _optimizer_option("progress")),
}
SDP_OPTIONS = {"solver": Option(None, sdp.check_solver), "tolerance": Option(None, sdp.check_tolerance)}


# ------------------------------------------------------------------------------ the registry
def _single_rule(rule: Callable[[Mapping[str, Any]], Rule]) -> Runner:
    return lambda weights, slopes, options: closed_form.single_rule(weights, slopes, rule(options))


def _rule_method(kind: str, description: str) -> Method:
    def rule(options: Mapping[str, Any]) -> Rule:
        return Rule(kind, options["c"])

    return Method(kind, description, {"c": Option(DEFAULT_C[kind], _rule_parameter(kind))}, _single_rule(rule),
                  rule=rule)


def _sdp_method(name: str, description: str) -> Method:
    def run(weights: Weights, slopes: Slopes, options: Mapping[str, Any]) -> RecursionResult:
        return sdp.solve(name, weights, slopes, solver=options["solver"], tolerance=options["tolerance"])

    return Method(name, description, SDP_OPTIONS, run, float64_only=True, relaxed_slopes=False)


def _eclipse_fast_rule(options: Mapping[str, Any]) -> Rule:
    return Rule("sn", 1.0)


def _optimized(weights: Weights, slopes: Slopes, options: Mapping[str, Any]) -> dict[str, RecursionResult]:
    return optimize.optimized(weights, slopes, options["rules"], {k: options[k] for k in OPTIMIZER_OPTIONS})


_ENTRIES = (
    Method("naive", "product of spectral norms times the largest slope", {},
           lambda weights, slopes, options: closed_form.naive(weights, slopes), float64_only=True,
           relaxed_slopes=False),
    Method("eclipse-fast", "ECLipsE-Fast (Xu & Sivaranjani 2024) = SN(1)", {}, _single_rule(_eclipse_fast_rule),
           rule=_eclipse_fast_rule),
    _rule_method("sn", "spectral rule SN(c), default c=1"),
    _rule_method("gc", "Gershgorin rule GC(c), default c=1.99"),
    _rule_method("shift", "Weyl shift rule Shift(c), default c=1.5"),
    _rule_method("gcs", "rescaled spectral rule GCs(c), default c=1.5"),
    Method("greedy", "per-layer choice among the default rule set", {"rules": RULES},
           lambda weights, slopes, options: closed_form.greedy(weights, slopes, options["rules"]), mixes_rules=True),
    Method("combined", "minimum over SN(1), GC(1.5,1.7,1.99), Shift(1.3,1.5,1.7), GCs(1,1.5) and naive",
           {"rules": RULES, "prune": Option("auto", _prune), "beam": Option(None, _beam)},
           lambda weights, slopes, options: closed_form.combined(weights, slopes, options["rules"],
                                                                 prune=options["prune"], beam=options["beam"])),
    _sdp_method("eclipse", "ECLipsE: one small SDP per layer (needs the sdp extra)"),
    _sdp_method("lipsdp-neuron", "LipSDP-Neuron SDP (needs the sdp extra)"),
    _sdp_method("lipsdp-layer", "LipSDP-Layer SDP (needs the sdp extra)"),
    Method("optimized", "combined, then L-BFGS on the Theorem 1 multipliers towards LipSDP-Neuron",
           {"rules": RULES, **OPTIMIZER_OPTIONS}, _optimized, float64_only=True),
)
REGISTRY: dict[str, Method] = {m.name: m for m in _ENTRIES}
"""Every bound method by name."""
METHODS: dict[str, str] = {m.name: m.description for m in _ENTRIES}
"""Method name -> one-line description."""
ALIASES = {"ecl-fast": "eclipse-fast"}


def resolve(method: str, options: Mapping[str, Any] | None = None) -> MethodCall:
    """The registry entry of ``method`` with its options checked and completed by the defaults.

    ``method`` is a name of :data:`METHODS` (any case, ``_`` for ``-``); a rule may carry its
    parameter inline (``"gc(1.7)"``, the same as ``options={"c": 1.7}``).

    Raises
    ------
    UnknownMethodError
        ``method`` is no str, or names no method.
    InvalidOptionError
        ``options`` is no mapping, or names an option the method does not take.
    InvalidParameterError
        An option value outside its valid range.
    """
    valid = ", ".join(METHODS)
    if not isinstance(method, str):
        raise UnknownMethodError(f"method must be one method name (a str), got {type(method).__name__} {method!r}; "
                                 f"valid methods: {valid}")
    text = method.strip().lower()
    base, inline, _ = text.partition("(")
    key = base.replace("_", "-")
    entry = REGISTRY.get(ALIASES.get(key, key))
    if entry is None or (inline and "c" not in entry.options):
        raise UnknownMethodError(f"unknown method {method!r}; valid methods: {valid}")
    takes = f"valid options of {entry.name!r}: {', '.join(entry.options) or 'none'}"
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise InvalidOptionError(f"options must be a mapping of option names to values, got "
                                 f"{type(options).__name__} {options!r}; {takes}")
    unknown = [k for k in options if k not in entry.options]
    if unknown:
        raise InvalidOptionError(f"unknown option(s) {', '.join(map(repr, unknown))} for method {entry.name!r}; "
                                 f"{takes}")
    given = {k: entry.options[k].check(v) for k, v in options.items()}
    if inline:
        given["c"] = parse_rule(text, given.get("c")).c
    return MethodCall(entry, {k: given.get(k, opt.default) for k, opt in entry.options.items()})


def lipschitz(
    net: AnyNetwork,
    method: str = "combined",
    *,
    options: Mapping[str, Any] | None = None,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device | None = None,
    max_bytes: float | None = None,
    path: str = "auto",
) -> LipschitzBound:
    """Upper bound on the L2 Lipschitz constant of ``net``.

    Parameters
    ----------
    net : Network or GraphNetwork
        The network; the bound refers to its input space (raw inputs when it carries its
        normalization) and holds for every bias and every activation in its slope class.  A graph
        with residual blocks is bounded by the method on every chain, composed across stages with
        ||S|| + Lip(g) per block (:mod:`lipcert.bounds.graph`, docs/decisions.md 29).
    method : str
        One of :data:`METHODS` (``"gc(1.7)"`` style names set the rule parameter inline).
    options : mapping, optional
        Options of the method (:data:`REGISTRY` lists them; any other name raises
        :class:`~lipcert.errors.InvalidOptionError` naming the valid ones):

        - ``sn``, ``gc``, ``shift``, ``gcs``: ``c``, the rule parameter (defaults 1, 1.99, 1.5, 1.5);
          ``eclipse-fast`` (SN(1)) and ``naive`` take none.
        - ``combined``: ``rules`` (default: math.md section 4.3's nine rules), ``prune`` (``"auto"``,
          None or a factor; see :func:`lipcert.bounds.closed_form.combined`) and ``beam`` (at most
          this many passes besides SN(1) survive a layer: faster, looser; benchmarks/results/pruning.md).
        - ``greedy``: ``rules``.
        - ``optimized``: ``rules`` of its starting ``combined`` bound, ``iterations`` (default 100),
          ``seconds`` (time budget), ``direction`` (optimize the bound on Lip(c^T f), read it with
          ``along(c)``), ``pairs`` (also optimize every margin e_i - e_j, for ``pairwise()``),
          ``pair_iterations``, ``progress``; see :func:`lipcert.bounds.optimize.optimized`.
        - ``eclipse``, ``lipsdp-neuron``, ``lipsdp-layer``: ``solver`` (``"SCS"`` or ``"CLARABEL"``)
          and ``tolerance``, the solver tolerance in (0, 1).
    dtype : torch.dtype
        float64 (default) or float32 for the closed-form recursions (the expensive search: Gram
        matrices, eigenvalue estimates, every rule's Cholesky tests); see :func:`replay_in_float64`
        for how a float32 run still reports a float64 certificate.  The naive product, the SDP
        methods and ``optimized`` always run in float64.
    device : str or torch.device, optional
        Where to compute (``"cuda"`` when available); default CPU.
    max_bytes : float, optional
        Limit on the method's estimated working memory (:mod:`lipcert.bounds.workspace`), checked
        before anything is allocated; default 80 % of the memory available.
    path : "auto", "dense" or "matrix-free"
        For networks with operator layers (convolutions): "auto" runs dense where the estimate fits
        ``max_bytes`` and without dense matrices otherwise (:func:`~lipcert.bounds.workspace.choose_path`);
        "matrix-free" always without them (naive as a product of conv norms, the closed forms per
        frequency), "dense" always with them (after the memory check).

    Returns
    -------
    LipschitzBound
        ``value`` >= Lip_2(f); ``pairwise()`` and ``along(c)`` give margin constants.

    Raises
    ------
    UnknownMethodError, InvalidOptionError, InvalidParameterError
        See :func:`resolve`.
    NotANetworkError
        ``net`` is no Network (:func:`lipcert.lipschitz` loads paths and torch modules).
    MemoryBudgetError
        The estimated working memory is over ``max_bytes`` (the message names ``--max-dense-gb``).

    Notes
    -----
    The closed forms are Theorem 1 of Syed & Hu (2025, arXiv:2503.14297): with M_0 = I,
    Gamma_k = W_k M_{k-1}^{-1} W_k^T and M_k = 2 Lambda_k - Lambda_k Gamma_k Lambda_k > 0,
    Lip(f) <= ||W_L M_{L-1}^{-1} W_L^T||^{1/2}.  Each rule picks a diagonal Lambda_k in
    closed form; ECLipsE-Fast is Lambda_k = I / lambda_max(Gamma_k).
    """
    call = resolve(method, options)
    if isinstance(net, GraphNetwork):
        return _graph(net, call, method, options, dtype=dtype, device=device, max_bytes=max_bytes, path=path)
    net = require_network(net, "lipschitz", operators=True)
    if dtype not in (torch.float64, torch.float32):
        raise InvalidArgumentError(f"dtype must be torch.float64 or torch.float32, got {dtype!r}")
    dev = checked_device(device)
    path, needed = choose_path(net, call.method.name, call.name, call.options, max_bytes, prefer=path)
    if path == "matrix-free":  # docs/decisions.md 21, 35
        start = time.perf_counter()
        results = {"naive": matrix_free.naive(net)}
        slopes = [(a.to(dev), b.to(dev)) for a, b in net.slopes()]
        bound = _report(call, results, slopes, torch.float64, dev, time.perf_counter() - start)
    elif path == "per-frequency":  # docs/decisions.md 27, 32
        bound = _per_frequency(call, net)
    else:  # operator layers are materialized (the estimate counted them)
        dense = net.densified(max(needed, DEFAULT_MAX_DENSE_BYTES)) if net.has_operators else net
        bound = _compute(call, dense, torch.float64 if call.method.float64_only else dtype, dev)
    if net.has_operators:
        bound = replace(bound, extras={"path": path, **bound.extras, "memory_estimate": needed})
    return replace(bound, network=net.fingerprint())


def _graph(net: GraphNetwork, call: MethodCall, method: str, options: Mapping[str, Any] | None, *,
           dtype: torch.dtype, device: str | torch.device | None, max_bytes: float | None,
           path: str = "auto") -> LipschitzBound:
    """:func:`lipschitz` of a network graph: the method on every chain, composed (:mod:`.graph`); margin
    options (``direction``, ``pairs``) go to the last chain.  With operator layers: densified as a whole
    where :func:`~.workspace.graph_path` says so, else each chain by :func:`choose_path`, naive matrix-free
    where a chain has no path (docs/decisions.md 51)."""
    inner = {k: v for k, v in (options or {}).items() if k not in ("direction", "pairs")}
    route, needed = graph_path(net, call.method.name, call.name, call.options, max_bytes, prefer=path)
    work = net.densified(max(needed, DEFAULT_MAX_DENSE_BYTES)) if route == "dense" else net
    fallbacks: list[str] = []

    def chain_bound(chain: Network, last: bool) -> LipschitzBound:
        opts = options if last else inner
        try:
            return lipschitz(chain, method, options=opts, dtype=dtype, device=device, max_bytes=max_bytes, path=path)
        except (MemoryBudgetError, InvalidArgumentError) as err:
            if route == "dense" or not chain.has_operators or method == "naive":
                raise
            fallbacks.append(f"chain {list(chain.widths)}: {str(err).split(';')[0]}")
            try:
                naive = lipschitz(chain, "naive", max_bytes=max_bytes, path="matrix-free")
            except MemoryBudgetError:
                raise err from None  # the method's own reason, not its fallback's
            return replace(naive, extras={**naive.extras, "path": "matrix-free naive (fallback)"})

    bound = graph.graph_lipschitz(work, chain_bound, call.name)
    extras = {**bound.extras, "graph_path": route, "memory_estimate": needed, "fallbacks": fallbacks}
    return replace(bound, network=net.fingerprint(), extras=extras if net.has_operators else bound.extras)


def _per_frequency(call: MethodCall, net: Network) -> LipschitzBound:
    """The per-frequency bound of an operator network (docs/decisions.md 27, 32).

    ``extras["path"]`` is ``"per-frequency"``, or ``"matrix-free naive"`` where the naive product (run
    beside the rules on zero-padded grids, and in ``combined``) is the smaller.  Always float64 on the CPU
    (``dtype`` and ``device`` do not apply).
    """
    start = time.perf_counter()
    results = conv_closed_form.certificates(net, call.method.name, call.options)
    bound = _report(call, results, net.slopes(), torch.float64, torch.device("cpu"), time.perf_counter() - start)
    return replace(bound, extras={**bound.extras, "path": "matrix-free naive" if bound.rule == "naive" else
                                  "per-frequency"})


def checked_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch device that exists here (default: the CPU); else InvalidArgumentError."""
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidArgumentError(f"device must be 'cpu', 'cuda', 'cuda:N' or a torch.device, got {device!r} "
                                   f"({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError(f"device {device!r} asked for CUDA, which torch does not have on this machine; "
                                   "use device='cpu'")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise InvalidArgumentError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA devices")
    return dev


def _on(net: Network, device: torch.device, dtype: torch.dtype) -> tuple[Weights, Slopes]:
    """The network's weights and per-neuron slopes on ``device`` in ``dtype``."""
    return ([w.to(device, dtype) for w in net.weights],
            [(a.to(device, dtype), b.to(device, dtype)) for a, b in net.slopes()])


def _compute(call: MethodCall, net: Network, dtype: torch.dtype, device: torch.device) -> LipschitzBound:
    """Run ``call`` in ``dtype`` on ``device``; float32 results go through :func:`replay_in_float64`."""
    start = time.perf_counter()
    weights, slopes = _on(net, device, dtype)
    results = call.run(weights, slopes)
    if dtype == torch.float32:
        return replace(replay_in_float64(call, results, net, device), seconds=time.perf_counter() - start)
    return _report(call, results, slopes, dtype, device, time.perf_counter() - start)


def replay_in_float64(call: MethodCall, results: Mapping[str, RecursionResult], net: Network,
                      device: torch.device) -> LipschitzBound:
    """The best of a float32 run's certificates, rebuilt in float64 on the network's own weights.

    Parameters
    ----------
    call : MethodCall
        The method and options that produced ``results``.
    results : mapping of str to RecursionResult
        The float32 certificates by name.
    net : Network
        The network (its float64 weights, not their float32 rounding, are what is certified).
    device : torch.device
        Where to compute.

    Returns
    -------
    LipschitzBound
        The best float32 certificate's multipliers replayed in float64 (one pass of Gram
        matrices, Cholesky factors and solves, no eigenvalues; math.md section 5): a float64
        certificate, since a float32 value alone can lie below what its own multipliers certify
        (docs/decisions.md 11(c)).  ``per_rule`` and the margin bounds hold that
        certificate only; ``extras["float32_estimates"]`` has the float32 value of every
        certificate.  If the replay fails a Cholesky test, ``call`` is rerun in float64 (said in
        ``status``).  ``seconds`` covers the replay (and rerun) only.
    """
    start = time.perf_counter()
    estimates = {k: r.value for k, r in results.items()}
    best = min(estimates, key=estimates.__getitem__)
    weights, slopes = _on(net, device, torch.float64)
    try:
        checked = (closed_form.naive(weights, slopes) if best == "naive" else
                   replay(weights, closed_form.closed_form_slopes(slopes), results[best].multipliers,
                          results[best].labels))
    except InfeasibleCertificateError as err:
        redo = _compute(call, net, torch.float64, device)
        return replace(redo, seconds=time.perf_counter() - start,
                       status=f"float32 certificate failed its float64 check ({err}); recomputed in float64"
                              + ("" if redo.status == "ok" else f"; {redo.status}"),
                       extras={**redo.extras, "float32_estimates": estimates})
    checked.extras.update(results[best].extras)
    return _report(call, {best: checked}, slopes, torch.float32, device, time.perf_counter() - start, estimates)


def _report(call: MethodCall, results: Mapping[str, RecursionResult], slopes: Slopes, dtype: torch.dtype,
            device: torch.device, seconds: float, estimates: Mapping[str, float] | None = None) -> LipschitzBound:
    """The :class:`LipschitzBound` of ``results`` (their minimum) with fallbacks and notes in ``status``."""
    name = call.name
    values = {k: r.value for k, r in results.items()}
    best = min(values, key=values.__getitem__)
    winner = results[best]
    notes = [f"{k}: {n}" for k, r in results.items() for n in r.notes if "constant neurons" not in n]
    own = call.method.rule(call.options).name if call.method.rule is not None else None
    fallbacks = sorted({f"{k}: layer {i + 1} fell back to {lab}" for k, r in results.items()
                        for i, lab in enumerate(r.labels)
                        if not call.method.mixes_rules and lab != (own or k) and not lab.startswith(abs_layer.LABELS)})
    status = "ok" if not (notes or fallbacks) else "; ".join(fallbacks + notes)
    used_slopes = closed_form.closed_form_slopes(slopes) if call.method.relaxed_slopes else slopes
    return LipschitzBound(
        value=values[best],
        method=name,
        per_rule=values,
        rule=best,
        multipliers=tuple(m.detach().double().cpu() for m in winner.multipliers),
        slopes=tuple((a.double().cpu(), b.double().cpu()) for a, b in used_slopes),
        seconds=seconds,
        status=status,
        grams={k: Gram(r.gram.double(), r.log_scale) for k, r in results.items()},
        # the method's own result (optimized: the optimizer's record) is reported whichever pass wins
        extras={"dtype": str(dtype).replace("torch.", ""), "device": str(device), **winner.extras,
                **({"float32_estimates": dict(estimates)} if estimates else {}),
                **(results[name].extras if name in results else {}), "layer_rules": list(winner.labels)},
    )
