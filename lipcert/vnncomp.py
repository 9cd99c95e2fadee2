"""Answer a VNN-LIB property the way VNN-COMP tools do: ``unsat`` (holds), ``sat`` (counterexample),
``unknown`` or ``timeout``.

Proof (``unsat``).  Let x0 be the centre of the input box and r >= ||x - x0||_2 for every x in the
box (the norm of the half-widths, rounded up).  For a disjunct {y : a_i^T y <= b_i for all i} of the
violation region, a row i with

    a_i^T f(x0) - b_i - tol_i > Lip(a_i^T f) r

makes the disjunct infeasible on the box, because a_i^T f(x) >= a_i^T f(x0) - Lip(a_i^T f) ||x - x0||.
Lip(a_i^T f) need only hold for the pairs (x, x0), x in the box: by default the anchored local
constants of :func:`lipcert.local.local_bound` on the L-infinity ball of radius max_j h_j
around x0, which contains the box (h the half-widths; per-neuron slopes of the secants from z(x0),
from interval and Lipschitz bounds of the pre-activations over that ball), or a global bound (any
method of :data:`lipcert.bounds.METHODS`); tol_i covers the float64 error of the computed a_i^T f(x0)
(:func:`lipcert.rounding.logit_error_bound`).  The property holds when every disjunct is infeasible.
No bound is computed when some disjunct has no row with a_i^T f(x0) - b_i > ||grad a_i^T f(x0)|| r:
the gradient norm at the centre is a lower bound on any such Lipschitz constant, so the proof
would fail (this skip only saves time; it never changes an answer to ``unsat``).

Counterexample (``sat``).  Projected gradient descent inside the box on max_i (a_i^T f(x) - b_i),
one run per unproven disjunct and restart; a candidate counts only after it is rounded to the
model's input precision inside the box and its **onnxruntime** output satisfies the disjunct in
float64 arithmetic (strict rows strictly).

The answer refers to the ONNX model as lipcert converts it (float32 weights taken exactly,
arithmetic exact up to the allowances above); counterexamples refer to onnxruntime's output.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .adapters.sniff import sniff
from .adapters.vnnlib import VnnProperty, read_vnnlib
from .batch import check_count, check_number
from .bounds import lipschitz
from .bounds.methods import resolve
from .bounds.result import Gram
from .errors import InvalidArgumentError, ModelLoadError, ShapeMismatchError, UnknownMethodError
from .local.bound import local_bound
from .network import Network, require_network
from .rounding import UNIT_ROUNDOFF, error_layers, logit_error_bound

STATUSES = ("unsat", "sat", "unknown", "timeout")


@dataclass(frozen=True, eq=False)
class VnnResult:
    """Outcome of :func:`vnnlib_check` on one (model, property) instance.

    Attributes
    ----------
    status : str
        ``"unsat"`` (the property holds: proven), ``"sat"`` (a checked counterexample),
        ``"unknown"`` or ``"timeout"``.
    counterexample : (ndarray, ndarray) or None
        For ``sat``: the input x (flat, float64 holding the model-precision values written to the
        result file) and the onnxruntime output y at x.
    seconds : float
        Wall time of the check (model loading included).
    radius : float
        r, the L2 radius around the box centre that encloses the box.
    margins : ndarray of float64, shape (D,)
        Per disjunct: a_i^T f(x0) - b_i - tol_i for its best row (the one proving the largest radius;
        negative when the centre violates the row).
    lipschitz : ndarray of float64, shape (D,)
        Per disjunct: the bound on Lip(a_i^T f) over the box for that row (NaN when no bound was
        computed, see ``note``).
    radii : ndarray of float64, shape (D,)
        Per disjunct: margin / Lipschitz, the L2 radius around x0 in which it is proven infeasible.
    proven : ndarray of bool, shape (D,)
        Disjuncts proven infeasible on the box (radii > radius).
    method : str
        ``"local"`` (constants on the box) or the global bound method.
    timings : dict of str to float
        Seconds of ``"load"``, ``"bound"``, ``"attack"``.
    note : str
        Why the answer is ``unknown`` or ``timeout``, or what was skipped.
    """

    status: str
    counterexample: tuple[np.ndarray, np.ndarray] | None
    seconds: float
    radius: float
    margins: np.ndarray
    lipschitz: np.ndarray
    radii: np.ndarray
    proven: np.ndarray
    method: str
    timings: dict[str, float] = field(default_factory=dict)
    note: str = ""

    def __repr__(self) -> str:
        return (f"VnnResult(status={self.status!r}, proven={int(self.proven.sum())}/{self.proven.size} disjuncts, "
                f"radius={self.radius:.4g}, seconds={self.seconds:.3g})")

    def to_text(self) -> str:
        """The VNN-COMP result file: the status line, then for ``sat`` the assignment
        ``((X_0 v)\\n (X_1 v)\\n ... (Y_0 v) ...)``."""
        if self.counterexample is None:
            return self.status + "\n"
        x, y = self.counterexample
        pairs = [f"(X_{i} {float(v)!r})" for i, v in enumerate(x)] + [f"(Y_{j} {float(v)!r})" for j, v in enumerate(y)]
        return f"{self.status}\n(" + "\n ".join(pairs) + ")\n"

    def write(self, path: str | Path) -> None:
        """Write :meth:`to_text` to ``path`` (the VNN-COMP result file)."""
        Path(path).write_text(self.to_text(), encoding="utf-8")


class _Timeout(Exception):
    pass


class _Clock:
    def __init__(self, timeout: float | None) -> None:
        self.start = time.perf_counter()
        self.deadline = math.inf if timeout is None else self.start + timeout

    def check(self) -> None:
        if time.perf_counter() > self.deadline:
            raise _Timeout

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


# ---------------------------------------------------------------------------------- onnxruntime
class OnnxOracle:
    """onnxruntime on one flat input: the reference semantics of counterexamples."""

    def __init__(self, path: str | Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.name = inp.name
        self.shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        self.dtype = np.float64 if inp.type == "tensor(double)" else np.float32

    def representable(self, x: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray | None:
        """``x`` rounded to the input precision and moved inside [lower, upper] (None if impossible)."""
        xs = np.clip(np.asarray(x, dtype=np.float64), lower, upper).astype(self.dtype)
        low, high = xs.astype(np.float64) < lower, xs.astype(np.float64) > upper
        xs[low] = np.nextafter(xs[low], self.dtype(np.inf))
        xs[high] = np.nextafter(xs[high], self.dtype(-np.inf))
        inside = (xs.astype(np.float64) >= lower) & (xs.astype(np.float64) <= upper)
        return xs if inside.all() else None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.name: np.asarray(x, dtype=self.dtype).reshape(self.shape)})[0]
        return np.asarray(out, dtype=np.float64).reshape(-1)


def counterexample_holds(prop: VnnProperty, x: np.ndarray, y: np.ndarray) -> bool:
    """Whether ``x`` (flat input) and ``y`` (its model output) are finite, ``x`` lies in the box and ``y``
    in the violation region: the last check before a ``sat`` answer is given."""
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return bool(np.isfinite(xs).all() and np.isfinite(ys).all() and xs.size == prop.num_inputs
                and prop.in_box(xs)[0] and prop.violated_by(ys)[0])


# ---------------------------------------------------------------------------------- proof
def enclosing_ball(lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Centre x0 of the box, half-widths h with |x - x0| <= h elementwise for every x in the box
    (measured from the rounded centre, plus one ulp of the bounds), and r >= ||h||_2 (rounded up)."""
    x0 = (lower + upper) / 2
    half = np.maximum(upper - x0, x0 - lower) + np.spacing(np.maximum(np.abs(lower), np.abs(upper)))
    return x0, half, float(np.linalg.norm(half)) * (1 + 4 * half.size * UNIT_ROUNDOFF)


def _row_margins(prop: VnnProperty, f0: np.ndarray, err: float) -> list[np.ndarray]:
    """Per disjunct, lower bounds on a_i^T f(x0) - b_i of every row (float64 errors subtracted)."""
    out = []
    k = f0.size
    for d in prop.disjuncts:
        value = d.a @ f0 - d.b
        tol = np.abs(d.a).sum(axis=1) * err + 2 * (k + 1) * UNIT_ROUNDOFF * (np.abs(d.a) @ np.abs(f0) + np.abs(d.b))
        out.append(value - 2 * tol)
    return out


def _gradient_norms(net: Network, x0: np.ndarray, prop: VnnProperty) -> list[np.ndarray]:
    """||grad (a_i^T f)(x0)||_2 of every row: a lower bound on any Lipschitz bound over the box
    (where f is differentiable at x0), used only to skip hopeless proofs."""
    x = torch.as_tensor(x0).reshape(1, -1).requires_grad_(True)
    y = net(x.reshape(1, *net.input_shape))[0]
    grads = torch.stack([torch.autograd.grad(y[j], x, retain_graph=True)[0][0] for j in range(y.numel())])
    jac = grads.detach().numpy()
    return [np.linalg.norm(d.a @ jac, axis=1) for d in prop.disjuncts]


def _box_grams(net: Network, x0: np.ndarray, half: np.ndarray, method: str) -> list[Gram]:
    """Grams G with |c^T (f(x) - f(x0))| <= sqrt(c^T G c) ||x - x0|| for x in the box |x - x0| <= half."""
    if method == "local":
        radius = float(half.max()) * (1 + 4 * UNIT_ROUNDOFF)
        return list(local_bound(net, x0, radius, "inf", anchored=True).grams.values())
    return list(lipschitz(net, method).grams.values())


# ---------------------------------------------------------------------------------- attack
def _search(net: Network, prop: VnnProperty, todo: list[int], oracle: OnnxOracle, clock: _Clock, *,
            steps: int, restarts: int, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """PGD (float32, sign steps) inside the box for each disjunct in ``todo``; returns the first
    candidate whose onnxruntime output satisfies its disjunct, or None."""
    gen = torch.Generator().manual_seed(seed)
    lo = torch.as_tensor(prop.lower, dtype=torch.float32)
    hi = torch.as_tensor(prop.upper, dtype=torch.float32)
    step = 1.25 * (hi - lo) / max(steps, 1)
    layers = [(w.float(), b.float()) for w, b in zip(net.weights, net.biases)]
    rows = [(torch.as_tensor(prop.disjuncts[d].a, dtype=torch.float32),
             torch.as_tensor(prop.disjuncts[d].b, dtype=torch.float32)) for d in todo]

    def violation(x: torch.Tensor) -> torch.Tensor:
        z = x
        for k, (w, b) in enumerate(layers):
            z = z @ w.T + b
            if k < len(net.activations):
                z = net.activations[k](z)
        return torch.stack([(z[j] @ a.T - b).max() if a.shape[0] else z.new_tensor(-1.0)
                            for j, (a, b) in enumerate(rows)])

    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # small batches: threads only add synchronization (10-100x under load)
    try:
        return _restarts(violation, lo, hi, step, prop, todo, oracle, clock, steps, restarts, gen)
    finally:
        torch.set_num_threads(threads)


def _restarts(violation, lo: torch.Tensor, hi: torch.Tensor, step: torch.Tensor, prop: VnnProperty,
              todo: list[int], oracle: OnnxOracle, clock: _Clock, steps: int, restarts: int,
              gen: torch.Generator) -> tuple[np.ndarray, np.ndarray] | None:
    for r in range(restarts):
        x = ((lo + hi) / 2).repeat(len(todo), 1)
        if r > 0:
            x = lo + (hi - lo) * torch.rand(x.shape, generator=gen)
        best, best_v = x.clone(), torch.full((len(todo),), math.inf)
        for i in range(steps + 1):
            clock.check()
            x.requires_grad_(True)
            v = violation(x)
            with torch.no_grad():
                better = v < best_v
                best[better], best_v[better] = x[better], v[better]
            if i == steps or bool((best_v <= 0).any()):
                break
            (grad,) = torch.autograd.grad(v.sum(), x)
            with torch.no_grad():
                x = torch.minimum(torch.maximum(x - step * grad.sign(), lo), hi)
        for j in torch.argsort(best_v).tolist():
            if float(best_v[j]) > 1e-3:   # float32 search: near-misses are checked too
                break
            cand = oracle.representable(best[j].double().numpy(), prop.lower, prop.upper)
            if cand is None:
                continue
            out = oracle(cand)
            if prop.disjuncts[todo[j]].contains(out)[0]:
                return cand.astype(np.float64), out
    return None


# ---------------------------------------------------------------------------------- the verb
def vnnlib_check(
    model: str | Path,
    prop: str | Path | VnnProperty,
    *,
    timeout: float | None = None,
    method: str = "local",
    net: Network | None = None,
    attack_steps: int = 50,
    attack_restarts: int = 5,
    seed: int = 0,
) -> VnnResult:
    """Answer a VNN-LIB property on an ONNX model: ``unsat``, ``sat``, ``unknown`` or ``timeout``.

    Parameters
    ----------
    model : str or Path
        The ONNX model; onnxruntime on it is the reference for counterexamples (so a torch module
        or a Network alone is refused: export it to ONNX first).
    prop : str, Path or VnnProperty
        The property (a ``.vnnlib`` file, plain or gzip) whose assertions describe a violation.
    timeout : float, optional
        Seconds; when exceeded the answer is ``timeout`` (checked between steps, so a single
        Lipschitz bound computation can run over it).
    method : str
        ``"local"`` (default): constants valid on the box (:func:`lipcert.local.local_bound`,
        usually far tighter); or a global method of :data:`lipcert.bounds.METHODS` giving margin bounds.
    net : Network, optional
        ``lipcert.load(model)`` when already loaded (saves the conversion).
    attack_steps, attack_restarts, seed : int
        PGD steps per restart, restarts (the first from the centre, then uniform in the box), seed.

    Returns
    -------
    VnnResult
    """
    if timeout is not None and check_number("timeout", timeout) == 0:
        raise InvalidArgumentError(f"timeout must be a positive number of seconds, got {timeout!r}")
    attack_steps = check_count("attack_steps", attack_steps, 0)
    attack_restarts, seed = check_count("attack_restarts", attack_restarts, 0), check_count("seed", seed, 0)
    if not isinstance(model, str | Path):
        raise ModelLoadError(f"vnnlib_check needs the ONNX file of the model (onnxruntime on it checks "
                             f"counterexamples), got a {type(model).__name__}; export it with torch.onnx.export "
                             "and pass the path (and net=lipcert.load(...) to reuse a loaded Network)")
    if method != "local" and not resolve(method).method.margins:
        raise UnknownMethodError(f"method {method!r} gives no margin bounds; use 'local' or a closed form")
    if not Path(model).exists():
        raise ModelLoadError(f"no such model file: {model}")
    if (kind := sniff(Path(model), parse_onnx=False)) is not None:  # a zip or a pickle: torch or npz
        raise ModelLoadError(f"{model} is not an ONNX model (its content: {kind}); VNN-LIB "
                             "properties are answered on ONNX models (onnxruntime on the file checks every "
                             "counterexample): export the model with torch.onnx.export and pass the .onnx file")
    clock = _Clock(timeout)
    timings: dict[str, float] = {}
    spec = prop if isinstance(prop, VnnProperty) else read_vnnlib(prop)
    if net is None:
        from .loading import as_network

        net = as_network(model, verb="vnnlib_check")
    net = require_network(net, "lipcert vnnlib")  # the local bound and the attack read dense weight matrices
    if (spec.num_inputs, spec.num_outputs) != (net.input_dim, net.output_dim):
        raise ShapeMismatchError(f"{spec.source} has {spec.num_inputs} inputs and {spec.num_outputs} outputs but "
                                 f"the model {model} takes {net.input_dim} and gives {net.output_dim}")
    oracle = OnnxOracle(model)
    timings["load"] = clock.elapsed()
    x0, half, radius = enclosing_ball(spec.lower, spec.upper)
    f0, err = logit_error_bound(error_layers(net), torch.as_tensor(x0)[None])
    rows = _row_margins(spec, f0[0].numpy(), float(err[0]))
    n = len(spec.disjuncts)
    margins = np.array([m.max() if m.size else -np.inf for m in rows])
    lips = np.full(n, np.nan)
    radii = np.zeros(n)
    note = ""

    def result(status: str, cex: tuple[np.ndarray, np.ndarray] | None = None, why: str = "") -> VnnResult:
        if status == "sat" and (cex is None or not counterexample_holds(spec, *cex)):
            status, cex, why = "unknown", None, "a counterexample failed its final check (finite, in the box, violating)"
        return VnnResult(status, cex, clock.elapsed(), radius, margins, lips, radii, radii > radius, method,
                         timings, why or note)

    try:
        centre = oracle.representable(x0, spec.lower, spec.upper)
        if centre is not None and spec.violated_by(out := oracle(centre))[0]:
            return result("sat", (centre.astype(np.float64), out))
        clock.check()
        grads = _gradient_norms(net, x0, spec)
        hopeless = [i for i in range(n) if not (rows[i] > grads[i] * radius).any()]
        if hopeless:
            note = (f"no Lipschitz bound can prove disjunct {hopeless[0]}: the gradient norm at the centre times "
                    f"the radius already exceeds every row's margin")
        else:
            t = time.perf_counter()
            grams = _box_grams(net, x0, half, method)
            for i, m in enumerate(rows):
                lip = np.array([min(g.along(a) for g in grams) for a in spec.disjuncts[i].a])
                with np.errstate(divide="ignore", invalid="ignore"):
                    r = np.where(lip > 0, m / lip, np.where(m > 0, np.inf, 0.0)) * (1 - 8 * UNIT_ROUNDOFF)
                best = int(np.argmax(r))
                margins[i], lips[i], radii[i] = m[best], lip[best], r[best]
            timings["bound"] = time.perf_counter() - t
            if (radii > radius).all():
                return result("unsat")
            note = "the Lipschitz bound does not prove every disjunct"
        t = time.perf_counter()
        todo = [i for i in range(n) if not radii[i] > radius]
        cex = _search(net, spec, todo, oracle, clock, steps=attack_steps, restarts=attack_restarts, seed=seed)
        timings["attack"] = time.perf_counter() - t
        if cex is not None:
            return result("sat", cex)
        return result("unknown", why=note + "; no counterexample found")
    except _Timeout:
        return result("timeout", why=f"timeout after {clock.elapsed():.3g} s")
