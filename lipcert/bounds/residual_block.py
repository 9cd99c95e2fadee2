"""Certified L2 Lipschitz constants of residual blocks and chains of them (docs/decisions.md 30, 31).

A block is h(x) = S x + G sigma(W x + b) with S the shortcut (None: the identity), W the inner map
(m x n), G the outer map (n_out x m) and sigma slope-restricted on [alpha_i, beta_i] per neuron.
It is rho-Lipschitz for every bias b if a diagonal Lambda >= 0 makes the block LMI PSD::

    [[rho^2 I - S^T S + 2 W^T Lambda A B W,  -(S^T G + W^T Lambda (A + B))],
     [-(G^T S + (A + B) Lambda W),            2 Lambda - G^T G            ]]  >= 0

(A = diag(alpha), B = diag(beta); for [0, 1] slopes the brief's [[rho^2 I - S^T S, -S^T G - W^T Lambda],
[-G^T S - Lambda W, 2 Lambda - G^T G]]).  :mod:`.block_form` evaluates it in closed form for given
multipliers; this module chooses them (closed-form rules, their minimum, an L-BFGS optimizer) and
composes blocks.  Every value ends with :func:`lipcert.rounding.certified_root`.

Use: one block, :func:`block_constant`; blocks in sequence with a final linear map, :func:`chain_constant`
(``BlockBound.pairwise()`` then gives the margin constants); a branch with several hidden layers,
:func:`branch_chain`; an activation after the sum, the block ``ResidualBlock(0, I, I, alpha, beta)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import (InfeasibleCertificateError, InvalidSlopeError, NonFiniteWeightsError, ShapeMismatchError,
                      UnknownMethodError)
from ..rounding import certified_root
from . import block_form as bf
from .block_optimize import optimize_block
from .closed_form import spectral_norm_squared
from .eigen import lambda_max
from .recursion import shrink
from .result import Gram
from .rules import DEFAULT_RULE_SET

METHODS = ("combined", "optimized", "naive", "neuron") + tuple(r.name for r in DEFAULT_RULE_SET)
"""Methods of :func:`block_constant`: the minimum over every closed form ("combined"), its L-BFGS
refinement ("optimized"), ||S|| + ||G|| ||W|| max|slope| ("naive"), or one closed-form rule."""


@dataclass(frozen=True)
class BlockBound:
    """An upper bound on the L2 Lipschitz constant of a residual block (or a chain of blocks).

    ``value`` is certified (output units per input unit, inflated by a relative 1e-8); ``rule`` the
    candidate that won; ``per_rule`` the certified value of every candidate that was feasible;
    ``multipliers`` the true-scale Lambda (zero on dropped neurons) with which the block LMI holds
    at rho = value (None for naive and for chains); ``extras``: "raw" (sqrt(lambda_max) before the
    inflation), "form" (the carried form E: Lip(c^T h) <= sqrt(c^T E c)), "slopes" ("exact" or
    "relaxed"), and for chains "blocks" (the per-block values).
    """

    value: float
    method: str
    rule: str
    per_rule: dict[str, float]
    multipliers: torch.Tensor | None
    seconds: float
    extras: dict[str, Any] = field(default_factory=dict, repr=False)

    def __float__(self) -> float:
        return self.value

    def pairwise(self) -> np.ndarray:
        """K x K bounds on Lip_2(h_i - h_j) from the carried form E: sqrt(E_ii + E_jj - 2 E_ij), certified.

        For a chain with a head these are the margin constants of its outputs (math.md 7(i)).
        """
        return Gram(self.extras["form"], 0.0).pairwise()

    def along(self, c: np.ndarray | torch.Tensor | list[float]) -> float:
        """Certified bound on Lip_2(c^T h): sqrt(c^T E c)."""
        vec = np.asarray(c.detach().cpu() if isinstance(c, torch.Tensor) else c, dtype=np.float64).ravel()
        k = self.extras["form"].shape[0]
        if vec.shape != (k,):
            raise ShapeMismatchError(f"direction must have {k} entries (one per output), got {vec.shape[0]}")
        return Gram(self.extras["form"], 0.0).along(vec)


@dataclass(frozen=True)
class ResidualBlock:
    """One block of a chain: h(x) = shortcut x + outer sigma(inner x + b), slopes [alpha, beta] per neuron."""

    shortcut: torch.Tensor | None
    inner: torch.Tensor
    outer: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor


def block_constant(shortcut: torch.Tensor | None, inner: torch.Tensor, outer: torch.Tensor, alpha: torch.Tensor,
                   beta: torch.Tensor, *, method: str = "combined") -> BlockBound:
    """Certified bound on Lip_2 of h(x) = S x + G sigma(W x + b), for every bias b.

    Parameters
    ----------
    shortcut : Tensor or None
        S (n_out x n); None for the identity (n_out = n).
    inner, outer : Tensor
        W (m x n) and G (n_out x m).
    alpha, beta : Tensor
        Slope bounds of sigma, per neuron (m,) or one value (0-d).
    method : str
        One of :data:`METHODS`.
    """
    start = time.perf_counter()
    s, w, g, alpha, beta = _checked(shortcut, inner, outer, alpha, beta)
    if method not in METHODS:
        raise UnknownMethodError(f"unknown residual-block method {method!r}; valid: {', '.join(METHODS)}")
    per_rule: dict[str, float] = {}
    naive = _naive(s, w, g, alpha, beta)
    if method == "naive":
        return BlockBound(naive, method, "naive", {"naive": naive}, None, time.perf_counter() - start)
    best: tuple[bf.Choice, bf.Canonical] | None = None
    for relax in _treatments(alpha, beta, method):
        block = bf.canonical(s, w, g, alpha, beta, relax=relax)
        st = bf.stage(block)
        values: dict[str, float] = {}
        if block.inner.shape[0] == 0:
            found = bf.Choice("linear", block.inner.new_zeros(0), st.base, bf.top(st.base))
        else:
            wanted = None if method in ("combined", "optimized") else _only(st, method)
            found = bf.choose(st, wanted, values)
        if method == "optimized" and block.inner.shape[0]:
            found = optimize_block(st, found)
            values["optimized"] = math.sqrt(found.value)
        per_rule.update({f"{k} [{block.label}]" if relax else k: v for k, v in values.items()})
        if best is None or found.value < best[0].value:
            best = (found, block)
    assert best is not None
    found, block = best
    value = float(certified_root(found.value, 0.0))
    label = found.label if block.label == "exact" else f"{found.label} [relaxed]"
    if method in ("combined", "optimized") and naive < value:
        value, label, lam = naive, "naive", None
    else:
        lam = torch.zeros_like(alpha)
        lam[block.live] = found.lam * found.value
    per_rule = {k: float(certified_root(v * v, 0.0)) for k, v in per_rule.items()}
    per_rule["naive"] = naive
    extras = {"raw": math.sqrt(found.value), "form": found.form, "slopes": block.label}
    return BlockBound(value, method, label, per_rule, lam, time.perf_counter() - start, extras)


def multiplier_value(shortcut: torch.Tensor | None, inner: torch.Tensor, outer: torch.Tensor, alpha: torch.Tensor,
                     beta: torch.Tensor, multipliers: torch.Tensor) -> float:
    """Certified smallest rho of the block LMI for fixed true-scale multipliers Lambda (one per neuron).

    The Schur complement on the neuron block of the loop-transformed block (S', V, G):
    rho^2 = lambda_max(S'^T S' + K N^{-1} K^T), K = S'^T G + V^T Lambda, N = 2 Lambda - G^T G, with N
    checked by Cholesky; raises :class:`InfeasibleCertificateError` when it fails.
    """
    s, w, g, alpha, beta = _checked(shortcut, inner, outer, alpha, beta)
    lam = torch.as_tensor(multipliers, dtype=torch.float64)
    if lam.shape != alpha.shape:
        raise ShapeMismatchError(f"multipliers must be one per neuron ({alpha.shape[0]}), got shape {tuple(lam.shape)}")
    block = bf.canonical(s, w, g, alpha, beta)
    return float(certified_root(bf.fixed_multiplier_form(block, lam[block.live]), 0.0))


def chain_constant(blocks: Sequence[ResidualBlock], head: torch.Tensor | None = None, *,
                   method: str = "combined", greedy: bool = False) -> BlockBound:
    """Certified bound on Lip_2 of head . h_L . ... . h_1 for residual blocks h_k (``head``: a final linear map).

    The minimum of two certificates: the product of the block constants (:func:`block_constant` with
    ``method``) times ||head||, and the recursion that carries each block's form E_k into the next
    block (decisions 31), choosing every block's closed-form multipliers one block ahead (with
    ``method="optimized"`` also a pass whose blocks are refined by L-BFGS on lambda_max(E_k); being
    greedy it is not always better, and the lesser of the two passes is kept).
    ``extras["blocks"]`` lists the block constants; ``extras["form"]`` is head E_L head^T.
    ``greedy``: only the recursion, each block's multipliers chosen by its own lambda_max(E_k) (no look-ahead),
    exact slopes only; ~10x faster, for the many bounds of a local radius search (decisions 45).
    """
    start = time.perf_counter()
    if not blocks:
        raise ShapeMismatchError("chain_constant needs at least one residual block")
    width = blocks[-1].outer.shape[0]
    if head is not None:
        head = _matrix(head, "head")
        if head.shape[1] != width:
            raise ShapeMismatchError(f"head has {head.shape[1]} columns, the last block {width} outputs")
    if greedy:
        form = _carried(blocks, head, ahead=False)
        value = float(certified_root(bf.top(form), 0.0))
        extras = {"blocks": [], "form": form, "raw": math.sqrt(max(bf.top(form), 0.0))}
        return BlockBound(value, method, "recursion", {"recursion": value}, None, time.perf_counter() - start, extras)
    bounds = [block_constant(b.shortcut, b.inner, b.outer, b.alpha, b.beta, method=method) for b in blocks]
    product = math.prod(b.value for b in bounds)
    if head is not None:
        product *= float(certified_root(spectral_norm_squared(head), 0.0))
    forms = [_carried(blocks, head)] + ([_carried(blocks, head, optimized=True)] if method == "optimized" else [])
    form = min(forms, key=bf.top)
    recursion = float(certified_root(bf.top(form), 0.0))
    per_rule = {"product": product, "recursion": recursion}
    rule = "recursion" if recursion <= product else "product"
    extras = {"blocks": [b.value for b in bounds], "form": form, "raw": math.sqrt(max(bf.top(form), 0.0))}
    return BlockBound(min(product, recursion), method, rule, per_rule, None, time.perf_counter() - start, extras)


def _carried(blocks: Sequence[ResidualBlock], head: torch.Tensor | None, *, optimized: bool = False,
             ahead: bool = True) -> torch.Tensor:
    """head E_L head^T of the block recursion: E_0 = I, E_k the next form of block k from E_{k-1}.

    At block k every closed-form candidate is scored one block ahead: by the best closed-form
    lambda_max(E_{k+1}) of block k+1 from it, or at the last block by lambda_max(head E_k head^T)
    (decisions 31).  With ``optimized``, the kept candidate is refined by L-BFGS on lambda_max(E_k).
    Without ``ahead``, a candidate is scored by its own lambda_max(E_k) and slopes are taken exactly.
    """
    variants = _canonical_chain(blocks, "combined" if ahead else "exact")
    probes = [[bf.Probe() for _ in options] for options in variants]
    factor: torch.Tensor | None = None
    form: torch.Tensor | None = None
    for index, options in enumerate(variants):
        last = index + 1 == len(variants)
        best: tuple[float, bf.Choice, bf.Stage] | None = None
        for block in options:
            st = bf.stage(block, factor)
            if block.inner.shape[0] == 0:
                candidates = [bf.Choice("linear", block.inner.new_zeros(0), st.base, bf.top(st.base))]
            else:
                candidates = []  # at the last block the neuron rule sees the head (the Gamma rules do not)
                for label, lam, first in bf.distinct(bf.proposals(bf.projected(st, head) if last and head is not None
                                                                  else st)):
                    if first != label:  # the same multipliers as an earlier candidate: the same score
                        continue
                    nxt = bf.next_form(st, lam)
                    if nxt is not None:
                        candidates.append(bf.Choice(label, lam, nxt, bf.top(nxt)))
            for found in candidates:
                score = (bf.top(_headed(found.form, head)) if last
                         else found.value if not ahead
                         else _ahead(variants[index + 1], _lower_factor(found.form, index + 1),
                                     math.inf if best is None else best[0], probes[index + 1]))
                if best is None or score < best[0]:
                    best = (score, found, st)
        if best is None:
            raise InfeasibleCertificateError(f"no closed-form multipliers of residual block {index + 1} "
                                             "passed Cholesky")
        _, found, st = best
        if optimized and found.lam.numel():
            found = optimize_block(st, found)
        form = found.form
        factor = _lower_factor(form, index + 1)
    assert form is not None
    return _headed(form, head)


def branch_chain(shortcut: torch.Tensor | None, weights: Sequence[torch.Tensor], alphas: Sequence[torch.Tensor],
                 betas: Sequence[torch.Tensor]) -> tuple[list[ResidualBlock], torch.Tensor]:
    """A block with a deep branch, h(x) = S x + W_L sigma(W_{L-1} ... sigma(W_1 x + b_1) ...), as blocks and a head.

    The state (x, phi_k) carries the input beside the branch (decisions 31): block 1 is
    ([I; 0], W_1, [0; I]), block k is (diag(I, 0), [0, W_k], [0; I]), and the head is [S, W_L], so
    ``chain_constant(*branch_chain(...))`` bounds Lip(h) (with one hidden layer it equals
    :func:`block_constant`).  ``alphas[k]``, ``betas[k]``: slopes of hidden layer k+1 (one value or one per neuron).
    """
    if len(weights) < 2 or len(alphas) != len(weights) - 1 or len(betas) != len(weights) - 1:
        raise ShapeMismatchError(f"a branch needs L >= 2 weights and L - 1 slope pairs, got {len(weights)} weights, "
                                 f"{len(alphas)} alphas and {len(betas)} betas")
    ws = [_matrix(w, f"branch weight {k + 1}") for k, w in enumerate(weights)]
    n = ws[0].shape[1]
    dev = ws[0].device
    s = torch.eye(n, dtype=torch.float64, device=dev) if shortcut is None else _matrix(shortcut, "shortcut (S)")
    if s.shape != (ws[-1].shape[0], n):
        raise ShapeMismatchError(f"shortcut (S) must be {ws[-1].shape[0]} x {n} (outputs x inputs), "
                                 f"got {tuple(s.shape)}")
    blocks, prev = [], 0
    for k, w in enumerate(ws[:-1]):
        m = w.shape[0]
        if w.shape[1] != (n if k == 0 else prev):
            raise ShapeMismatchError(f"branch weight {k + 1} takes {w.shape[1]} inputs, the layer before gives "
                                     f"{n if k == 0 else prev}")
        short = torch.zeros(n + m, n + prev, dtype=torch.float64, device=dev)
        short[:n, :n] = torch.eye(n, dtype=torch.float64, device=dev)
        inner = torch.cat([torch.zeros(m, n, dtype=torch.float64, device=dev), w], 1) if k else w
        outer = torch.cat([torch.zeros(n, m, dtype=torch.float64, device=dev),
                           torch.eye(m, dtype=torch.float64, device=dev)])
        blocks.append(ResidualBlock(short, inner, outer, alphas[k], betas[k]))
        prev = m
    if ws[-1].shape[1] != prev:
        raise ShapeMismatchError(f"branch weight {len(ws)} takes {ws[-1].shape[1]} inputs, "
                                 f"the layer before gives {prev}")
    return blocks, torch.cat([s, ws[-1]], 1)


def _headed(form: torch.Tensor, head: torch.Tensor | None) -> torch.Tensor:
    """head E head^T, symmetrized (E itself without a head)."""
    if head is None:
        return form
    out = head @ form @ head.T
    return (out + out.T) / 2


def _ahead(options: list[bf.Canonical], factor: torch.Tensor, bar: float = math.inf,
           probes: list[bf.Probe] | None = None) -> float:
    """The least closed-form lambda_max(E_next) of a block (its slope treatments) from the form L L^T.

    Only whether it is below ``bar`` matters to the caller: candidates shown to be above the least value so
    far (or ``bar``) are skipped (:func:`.block_form.least_top`), and the result is then >= ``bar``.
    ``probes``, one per treatment, carry the lower bounds' directions between calls.
    """
    values = []
    for index, block in enumerate(options):
        st = bf.stage(block, factor)
        if block.inner.shape[0] == 0:
            values.append(bf.top(st.base))
            continue
        values.append(bf.least_top(st, min(values, default=bar), None if probes is None else probes[index]))
    return min(values, default=math.inf)


def _canonical_chain(blocks: Sequence[ResidualBlock], method: str) -> list[list[bf.Canonical]]:
    """Every block's canonical forms (the slope treatments of ``method``), with the widths of consecutive
    blocks checked."""
    out = []
    width: int | None = None
    for index, raw in enumerate(blocks, 1):
        s, w, g, alpha, beta = _checked(raw.shortcut, raw.inner, raw.outer, raw.alpha, raw.beta)
        if width is not None and s.shape[1] != width:
            raise ShapeMismatchError(f"block {index} takes {s.shape[1]} inputs, block {index - 1} gives {width}")
        width = s.shape[0]
        out.append([bf.canonical(s, w, g, alpha, beta, relax=relax) for relax in _treatments(alpha, beta, method)])
    return out


def _lower_factor(form: torch.Tensor, index: int) -> torch.Tensor:
    """Lower factor of a matrix >= E (E + delta Diag E, then + growing multiples of the top): a larger E is valid."""
    sym = (form + form.T) / 2
    grown = 2 * sym - shrink(sym)  # E + 4 n eps Diag(E)
    bump = 1e-12 * max(float(torch.diagonal(sym).max()), 1e-300)
    for _ in range(8):
        low, info = torch.linalg.cholesky_ex(grown)
        if int(info) == 0 and bool(torch.isfinite(low).all()):
            return low
        grown = grown + bump * torch.eye(sym.shape[0], dtype=sym.dtype, device=sym.device)
        bump *= 100
    raise InfeasibleCertificateError(f"the carried form after block {index} could not be factored")


def _treatments(alpha: torch.Tensor, beta: torch.Tensor, method: str) -> tuple[bool, ...]:
    """Slope treatments to try: exact, and for combined/optimized also relaxed when some 0 < alpha < beta."""
    some = bool(((alpha > 0) & (alpha < beta)).any())
    return (False, True) if some and method in ("combined", "optimized") else (False,)


def _only(st: bf.Stage, method: str) -> Iterator[tuple[str, torch.Tensor]]:
    """The proposals of one method ("neuron": the neuron rule's rescalings) and the SN(1) fallback."""
    for label, lam in bf.proposals(st):
        if label == method or (method == "neuron" and label.partition("(")[0] == "neuron"):
            yield label, lam
    scale = float(torch.diagonal(st.gamma).max())
    yield "sn(1)", torch.full_like(st.gamma[0], 1.0) / (float(lambda_max(st.gamma / scale)) * scale)


def _naive(s: torch.Tensor, w: torch.Tensor, g: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> float:
    """||S|| + ||G|| ||W|| max_i max(|alpha_i|, |beta_i|) (triangle inequality), certified norms."""
    slope = float(torch.maximum(alpha.abs(), beta.abs()).max()) if alpha.numel() else 0.0
    parts = [math.sqrt(max(spectral_norm_squared(m), 0.0)) if m.numel() else 0.0 for m in (s, w, g)]
    return float(certified_root((parts[0] + parts[1] * parts[2] * slope) ** 2, 0.0))


def _matrix(x: Any, name: str) -> torch.Tensor:
    """A finite float64 matrix, or a named error."""
    t = torch.as_tensor(x).detach().to(torch.float64)
    if t.dim() != 2:
        raise ShapeMismatchError(f"{name} must be a matrix, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise NonFiniteWeightsError(f"{name} holds NaN or infinite entries")
    return t


def _checked(shortcut: Any, inner: Any, outer: Any, alpha: Any, beta: Any
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float64 S, W, G and per-neuron slopes, with named errors for wrong shapes and values."""
    w, g = _matrix(inner, "inner (W)"), _matrix(outer, "outer (G)")
    m, n = w.shape
    if g.shape[1] != m:
        raise ShapeMismatchError(f"outer (G) has {g.shape[1]} columns, inner (W) {m} rows (neurons)")
    s = torch.eye(n, dtype=torch.float64, device=w.device) if shortcut is None else _matrix(shortcut, "shortcut (S)")
    if s.shape != (g.shape[0], n):
        raise ShapeMismatchError(f"shortcut (S) must be {g.shape[0]} x {n} (outputs x inputs), got {tuple(s.shape)}")
    slopes = []
    for name, x in (("alpha", alpha), ("beta", beta)):
        t = torch.as_tensor(x, dtype=torch.float64, device=w.device).detach()
        if t.dim() == 0:
            t = t.expand(m).clone()
        if t.shape != (m,):
            raise ShapeMismatchError(f"{name} must be one value or one per neuron ({m}), got shape {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise InvalidSlopeError(f"{name} holds NaN or infinite slopes")
        slopes.append(t)
    if bool((slopes[0] > slopes[1]).any()):
        bad = torch.nonzero(slopes[0] > slopes[1]).flatten()[:5].tolist()
        raise InvalidSlopeError(f"alpha > beta at neurons {bad}")
    return s, w, g, slopes[0], slopes[1]
