"""VNN-LIB property files (the VNN-COMP specification format) as a :class:`VnnProperty`.

A VNN-LIB file declares inputs ``X_0 .. X_{n-1}`` and outputs ``Y_0 .. Y_{K-1}`` and asserts
constraints whose conjunction describes a **violation** of the property: the property holds
(VNN-COMP answer ``unsat``) iff no input satisfying the input constraints gives an output
satisfying the output constraints; an input that does is a counterexample (answer ``sat``).

Supported forms
---------------
* Input constraints: bounds of one input against a constant, ``(<= X_3 0.5)``, ``(>= X_3 0.0)``,
  ``(<= 0.0 X_3)``, ``(<= (* 2 X_3) 1)``, at top level or inside top-level ``and``.  Every
  input needs a lower and an upper bound; repeated bounds are intersected.
* Output constraints: linear inequalities ``<=``, ``>=``, ``<``, ``>``, ``=`` between linear
  terms of outputs and constants (``+``, ``-``, ``*`` by a constant, ``/`` by a constant), nested
  in any ``and``/``or``; they are expanded into a disjunction of conjunctions (DNF).
* Not supported (a :class:`~lipcert.errors.VnnlibError` naming file and line): nonlinear terms,
  inequalities mixing inputs and outputs, inputs inside ``or`` (input disjunctions), relations
  between two inputs, undeclared or non-``Real`` variables, inputs without both bounds.

Convention of :class:`VnnProperty`: the violation region is the union over ``disjuncts`` of the
polyhedra {y : A y <= b} (rows marked ``strict`` need A_i y < b_i), for inputs x with
``lower <= x <= upper`` elementwise, x indexed like the flattened model input.
"""

from __future__ import annotations

import gzip
import math
import re
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np

from ..errors import VnnlibError

MAX_DISJUNCTS = 100_000
_TOKEN = re.compile(r"(;[^\n]*)|(\n)|(\()|(\))|([^\s();]+)")
_VARIABLE = re.compile(r"^([XY])_(\d+)$")
_IGNORED = ("check-sat", "set-logic", "set-info", "set-option", "get-model", "exit")
_RELATIONS = ("<=", ">=", "<", ">", "=")


@dataclass(frozen=True, eq=False)
class Disjunct:
    """One conjunction of output constraints: {y : a y <= b}, rows with ``strict`` need a_i y < b_i.

    Attributes
    ----------
    a : ndarray of float64, shape (m, K)
    b : ndarray of float64, shape (m,)
    strict : ndarray of bool, shape (m,)
    """

    a: np.ndarray
    b: np.ndarray
    strict: np.ndarray

    def contains(self, y: np.ndarray) -> np.ndarray:
        """Which outputs (rows of ``y``, shape (N, K) or (K,)) lie in this region, in float64."""
        ys = np.atleast_2d(np.asarray(y, dtype=np.float64))
        lhs = ys @ self.a.T
        ok = np.where(self.strict, lhs < self.b, lhs <= self.b)
        return ok.all(axis=1)


@dataclass(frozen=True, eq=False)
class VnnProperty:
    """A VNN-LIB property: an input box and the output region of a violation.

    Attributes
    ----------
    lower, upper : ndarray of float64, shape (n,)
        Input box (X_i indexed like the flattened model input).
    disjuncts : tuple of Disjunct
        The violation region is the union of their polyhedra; a disjunct with no rows is the
        whole output space (every input violates).
    num_outputs : int
        K, the number of declared outputs Y_j.
    source : str
        The file it was read from (or ``"<string>"``).
    """

    lower: np.ndarray
    upper: np.ndarray
    disjuncts: tuple[Disjunct, ...]
    num_outputs: int
    source: str = "<string>"

    def __repr__(self) -> str:
        rows = sum(d.b.size for d in self.disjuncts)
        return (f"VnnProperty(inputs={self.num_inputs}, outputs={self.num_outputs}, "
                f"disjuncts={len(self.disjuncts)}, rows={rows}, source={self.source!r})")

    @property
    def num_inputs(self) -> int:
        return int(self.lower.size)

    def violated_by(self, y: np.ndarray) -> np.ndarray:
        """Mask (N,) of outputs (N, K) inside the violation region (float64 arithmetic)."""
        ys = np.atleast_2d(np.asarray(y, dtype=np.float64))
        out = np.zeros(ys.shape[0], dtype=bool)
        for d in self.disjuncts:
            out |= d.contains(ys)
        return out

    def in_box(self, x: np.ndarray) -> np.ndarray:
        """Mask (N,) of inputs (N, n) inside the box (float64 comparison)."""
        xs = np.atleast_2d(np.asarray(x, dtype=np.float64)).reshape(-1, self.num_inputs)
        return np.asarray(((xs >= self.lower) & (xs <= self.upper)).all(axis=1))


# ---------------------------------------------------------------------------------- reading
def read_vnnlib(path: str | Path) -> VnnProperty:
    """Parse a ``.vnnlib`` file (plain or gzip-compressed)."""
    p = Path(path)
    if not p.is_file():
        raise VnnlibError(f"no such VNN-LIB file: {p}")
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise VnnlibError(f"{p}: corrupt gzip file: {exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VnnlibError(f"{p}: not a text file ({exc})") from exc
    return parse_vnnlib(text, source=str(p))


def parse_vnnlib(text: str, source: str = "<string>") -> VnnProperty:
    """Parse VNN-LIB text into a :class:`VnnProperty` (see the module docstring for the forms)."""
    return _Parser(source).parse(text)


class _List(list):
    """A parenthesized s-expression with the line it starts on."""

    line: int = 0


def _read_sexprs(text: str, source: str) -> list[_List]:
    stack: list[_List] = []
    top: list[_List] = []
    line = 1
    for m in _TOKEN.finditer(text):
        comment, newline, opening, closing, atom = m.groups()
        if newline:
            line += 1
        elif comment:
            continue
        elif opening:
            node = _List()
            node.line = line
            stack.append(node)
        elif closing:
            if not stack:
                raise VnnlibError(f"{source}:{line}: unbalanced ')'")
            node = stack.pop()
            (stack[-1] if stack else top).append(node)
        elif atom:
            if not stack:
                raise VnnlibError(f"{source}:{line}: {atom!r} outside parentheses")
            stack[-1].append(atom)
    if stack:
        raise VnnlibError(f"{source}:{stack[-1].line}: '(' is never closed")
    return top


# A linear form: ({(kind, index): coefficient}, constant).
_Linear = tuple[dict[tuple[str, int], float], float]
# An atom: linear form <= 0 (or < 0 when strict), with its line.
_Atom = tuple[dict[tuple[str, int], float], float, bool, int]


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.declared: dict[str, tuple[str, int]] = {}

    def error(self, line: int, message: str) -> VnnlibError:
        return VnnlibError(f"{self.source}:{line}: {message}")

    def parse(self, text: str) -> VnnProperty:
        lower: dict[int, float] = {}
        upper: dict[int, float] = {}
        output: list[list[_Atom]] = [[]]
        for cmd in _read_sexprs(text, self.source):
            head = cmd[0] if cmd and isinstance(cmd[0], str) else None
            if head == "declare-const":
                self.declare(cmd)
            elif head == "assert":
                if len(cmd) != 2:
                    raise self.error(cmd.line, "assert takes one formula")
                dnf = self.dnf(cmd[1], cmd.line)
                inputs = [a for conj in dnf for a in conj if self.kind(a) == "X"]
                if inputs and len(dnf) > 1:
                    raise self.error(cmd.line, "input constraints inside 'or' (input disjunctions) are "
                                               "not supported; split the property into one file per box")
                if inputs:
                    for atom in inputs:
                        self.bound(atom, lower, upper)
                    dnf = [[a for a in dnf[0] if self.kind(a) == "Y"]]
                output = [x + y for x, y in product(output, dnf)]
                if len(output) > MAX_DISJUNCTS:
                    raise self.error(cmd.line, f"the output constraints expand to more than {MAX_DISJUNCTS} "
                                               "disjuncts")
            elif head in _IGNORED:
                continue
            else:
                raise self.error(cmd.line, f"unsupported command {head or cmd[0]!r}: expected declare-const or assert")
        return self.finish(lower, upper, output)

    def declare(self, cmd: _List) -> None:
        if len(cmd) != 3 or not all(isinstance(t, str) for t in cmd[1:]):
            raise self.error(cmd.line, "declare-const takes a name and a sort")
        name, sort = cmd[1], cmd[2]
        m = _VARIABLE.match(name)
        if m is None:
            raise self.error(cmd.line, f"variable {name!r}: only X_<i> (inputs) and Y_<j> (outputs) are supported")
        if sort != "Real":
            raise self.error(cmd.line, f"variable {name} has sort {sort}; only Real is supported")
        if name in self.declared:
            raise self.error(cmd.line, f"variable {name} is declared twice")
        self.declared[name] = (m.group(1), int(m.group(2)))

    # ------------------------------------------------------------------ formulas
    def dnf(self, f: str | _List, line: int) -> list[list[_Atom]]:
        """Disjunctive normal form of a formula: a list of conjunctions of atoms."""
        if not isinstance(f, _List) or not f or not isinstance(f[0], str):
            raise self.error(getattr(f, "line", line), f"expected a formula, got {f!r}")
        head, args = f[0], f[1:]
        if head == "and":
            out: list[list[_Atom]] = [[]]
            for g in args:
                out = [x + y for x, y in product(out, self.dnf(g, f.line))]
                if len(out) > MAX_DISJUNCTS:
                    raise self.error(f.line, f"formula expands to more than {MAX_DISJUNCTS} disjuncts")
            return out
        if head == "or":
            if not args:
                raise self.error(f.line, "empty 'or' (false) is not supported")
            return [conj for g in args for conj in self.dnf(g, f.line)]
        if head in _RELATIONS:
            return [self.atoms(f)]
        raise self.error(f.line, f"unsupported formula {head!r}: expected and, or, <=, >=, <, >, =")

    def atoms(self, f: _List) -> list[_Atom]:
        head = f[0]
        if len(f) != 3:
            raise self.error(f.line, f"'{head}' takes two arguments, got {len(f) - 1}")
        lhs, rhs = self.term(f[1], f.line), self.term(f[2], f.line)
        if head in ("<=", "<"):
            forms = [(lhs, rhs)]
        elif head in (">=", ">"):
            forms = [(rhs, lhs)]
        else:
            forms = [(lhs, rhs), (rhs, lhs)]
        out = []
        for small, big in forms:  # small - big <= 0
            coef = dict(small[0])
            for v, c in big[0].items():
                coef[v] = coef.get(v, 0.0) - c
            coef = {v: c for v, c in coef.items() if c != 0.0}
            kinds = {v[0] for v in coef}
            if len(kinds) > 1:
                raise self.error(f.line, "a constraint mixing inputs (X) and outputs (Y) is not supported")
            if not kinds:
                raise self.error(f.line, "a constraint without variables is not supported")
            out.append((coef, small[1] - big[1], head in ("<", ">"), f.line))
        return out

    def term(self, t: str | _List, line: int) -> _Linear:
        if isinstance(t, str):
            if t in self.declared:
                return {self.declared[t]: 1.0}, 0.0
            if _VARIABLE.match(t):
                raise self.error(line, f"variable {t} is not declared")
            try:
                value = float(t)
            except ValueError:
                raise self.error(line, f"unknown symbol {t!r}") from None
            if not math.isfinite(value):  # nan/inf would make an empty box look non-empty (nan > x is False)
                raise self.error(line, f"non-finite constant {t!r}: bounds and coefficients must be finite numbers")
            return {}, value
        if not t or not isinstance(t[0], str):
            raise self.error(t.line, f"expected a term, got {t!r}")
        head, args = t[0], [self.term(a, t.line) for a in t[1:]]
        if not args:
            raise self.error(t.line, f"'{head}' without arguments")
        if head == "+" or (head == "-" and len(args) == 1):
            sign = -1.0 if head == "-" else 1.0
            return self.add(args, [sign] * len(args))
        if head == "-":
            return self.add(args, [1.0] + [-1.0] * (len(args) - 1))
        if head == "*":
            variable = [a for a in args if a[0]]
            if len(variable) > 1:
                raise self.error(t.line, "nonlinear term: a product of variables")
            scale = float(np.prod([a[1] for a in args if not a[0]]))
            if not math.isfinite(scale):
                raise self.error(t.line, f"the constant factors of '*' overflow to {scale!r}")
            coef, const = variable[0] if variable else ({}, 1.0)
            return {v: scale * c for v, c in coef.items()}, scale * const
        if head == "/":
            if len(args) != 2 or args[1][0]:
                raise self.error(t.line, "nonlinear term: '/' needs two arguments and a constant divisor")
            if args[1][1] == 0.0:
                raise self.error(t.line, "division by zero")
            coef, const = args[0]
            return {v: c / args[1][1] for v, c in coef.items()}, const / args[1][1]
        raise self.error(t.line, f"unsupported term {head!r}: expected +, -, * or / (linear terms only)")

    @staticmethod
    def add(args: list[_Linear], signs: list[float]) -> _Linear:
        coef: dict[tuple[str, int], float] = {}
        const = 0.0
        for (c, k), s in zip(args, signs):
            for v, x in c.items():
                coef[v] = coef.get(v, 0.0) + s * x
            const += s * k
        return coef, const

    @staticmethod
    def kind(atom: _Atom) -> str:
        return next(iter(atom[0]))[0]

    # ------------------------------------------------------------------ result
    def bound(self, atom: _Atom, lower: dict[int, float], upper: dict[int, float]) -> None:
        coef, const, _, line = atom
        if len(coef) != 1:
            raise self.error(line, "an input constraint must bound one input by a constant "
                                   f"(got {len(coef)} inputs); only boxes are supported")
        ((_, i), c), = coef.items()
        value = -const / c  # c x + const <= 0
        if abs(c) != 1.0:   # the division rounded: widen outward
            value = float(np.nextafter(value, np.inf if c > 0 else -np.inf))
        if not math.isfinite(value):
            raise self.error(line, f"the bound on X_{i} is {value!r}: input bounds must be finite")
        if c > 0:
            upper[i] = min(upper.get(i, np.inf), value)
        else:
            lower[i] = max(lower.get(i, -np.inf), value)

    def finish(self, lower: dict[int, float], upper: dict[int, float], output: list[list[_Atom]]) -> VnnProperty:
        counts = {}
        for kind in "XY":
            idx = sorted(i for k, i in self.declared.values() if k == kind)
            if idx != list(range(len(idx))):
                missing = sorted(set(range(max(idx) + 1)) - set(idx))
                raise VnnlibError(f"{self.source}: {kind}_{missing[0]} is not declared but {kind}_{max(idx)} is; "
                                  f"variables must be numbered 0, 1, 2, ...")
            counts[kind] = len(idx)
        n, k = counts["X"], counts["Y"]
        if n == 0:
            raise VnnlibError(f"{self.source}: no input variables X_i are declared")
        if k == 0:
            raise VnnlibError(f"{self.source}: no output variables Y_j are declared")
        for what, got in (("lower", lower), ("upper", upper)):
            missing = [i for i in range(n) if i not in got]
            if missing:
                more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
                raise VnnlibError(f"{self.source}: no {what} bound for "
                                  f"{', '.join(f'X_{i}' for i in missing[:5])}{more}")
        lo = np.array([lower[i] for i in range(n)])
        hi = np.array([upper[i] for i in range(n)])
        if (lo > hi).any():
            i = int(np.flatnonzero(lo > hi)[0])
            raise VnnlibError(f"{self.source}: empty input box: X_{i} >= {lo[i]!r} and X_{i} <= {hi[i]!r}")
        disjuncts = []
        for conj in output:
            a = np.zeros((len(conj), k))
            b = np.zeros(len(conj))
            strict = np.zeros(len(conj), dtype=bool)
            for r, (coef, const, is_strict, _) in enumerate(conj):
                for (_, j), c in coef.items():
                    a[r, j] = c
                b[r], strict[r] = -const, is_strict
            disjuncts.append(Disjunct(a, b, strict))
        return VnnProperty(lo, hi, tuple(disjuncts), k, self.source)
