"""Network graphs: a sequence of chain pieces and residual blocks (docs/decisions.md 28).

A :class:`GraphNetwork` is f = s_T o a_{T-1} o s_{T-1} o ... o a_1 o s_1, where each stage s_t is a chain
:class:`~lipcert.Network`, a :class:`Residual` block y = S x + c + g(x) (S the identity or a dense
linear shortcut, g a chain Network), an L2-norm pooling :class:`~lipcert.norm_pool.NormPool` (a
non-elementwise map with an exact Lipschitz constant, decisions 43) or an L2-norm residual
:class:`~lipcert.norm_residual.NormResidual` (sqrt(x^2/2 + g(x)^2/2 + eps), decisions 44), and each a_t between two stages is an elementwise
slope-restricted activation or nothing.  :func:`graph_network` builds one and normalizes it: a linear
residual (g a single affine map) is merged into one affine map S + W exactly, a zero shortcut leaves
the chain g, and neighbouring chains are joined, so a model with no real skip connection comes back
as a plain Network.  Evaluation is float64, as for a Network.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch

from .activations import Activation, get_activation
from .errors import DenseTooLargeError, ShapeMismatchError
from .network import ArrayLike, Network, _as_tensor, array_hash, batched
from .norm_pool import NormPool
from .norm_residual import NormResidual
from .operators import DEFAULT_MAX_DENSE_BYTES, LinearOperator

Hook = Callable[[int, Activation, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``hook(site, activation, alpha, beta, z)``: replaces activation site number ``site`` (counted in
evaluation order over the whole graph) applied to pre-activations ``z`` (batch, n)."""
Cut = NormPool | NormResidual
"""A stage that is neither a chain nor a residual block: no certificate of the recursion passes through it."""
CutHook = Callable[[int, Cut, torch.Tensor, torch.Tensor | None], torch.Tensor]
"""``cut_hook(number, stage, z, out)``: replaces the ``number``-th (0-based) cut stage applied to ``z`` (batch, n);
``out`` is g(z) for a NormResidual (its branch already evaluated, with ``hook``), None for a NormPool."""


@dataclass(frozen=True, eq=False)
class Residual:
    """A residual block y = S x + c + g(x).

    Attributes
    ----------
    branch : Network
        g, a chain from n_in to n_out entries (flat vectors).
    shortcut : Tensor, LinearOperator or None
        S, a dense float64 (n_out, n_in) matrix (a 1x1 convolution, a downsampling, ...), a
        convolution kept as an operator (:class:`~lipcert.operators.Conv2dOperator`, docs/decisions.md 51),
        or None for the identity (n_in = n_out).
    shortcut_bias : Tensor or None
        c (n_out,), the shortcut's bias, or None for 0.
    """

    branch: Network
    shortcut: torch.Tensor | LinearOperator | None = None
    shortcut_bias: torch.Tensor | None = None

    @property
    def input_dim(self) -> int:
        return self.branch.input_dim

    @property
    def output_dim(self) -> int:
        return self.branch.output_dim

    def shortcut_matrix(self, max_bytes: int = DEFAULT_MAX_DENSE_BYTES) -> torch.Tensor:
        """S as a dense matrix (the identity materialized; an operator densified, at most ``max_bytes``)."""
        if self.shortcut is None:
            return torch.eye(self.input_dim, dtype=torch.float64)
        return self.shortcut if isinstance(self.shortcut, torch.Tensor) else self.shortcut.dense(max_bytes)

    def apply_shortcut(self, z: torch.Tensor) -> torch.Tensor:
        """S z + c for a flat batch z (B, n_in), in z's dtype."""
        s = self.shortcut
        out = z if s is None else z @ s.to(z.dtype).T if isinstance(s, torch.Tensor) else s.matmat(z)
        return out if self.shortcut_bias is None else out + self.shortcut_bias.to(z.dtype)


Stage = Network | Residual | NormPool | NormResidual


@dataclass(frozen=True, eq=False)
class GraphNetwork:
    """Stages (chains, residual blocks, L2-norm poolings) with optional elementwise activations between them.

    Built by :func:`graph_network`, which checks the shapes and merges what is a chain.

    Attributes
    ----------
    stages : tuple of Network, Residual, NormPool or NormResidual
        s_1..s_T on flat vectors; stage t's input has the size of stage t-1's output.
    activations : tuple of Activation or None
        a_1..a_{T-1}, the activation after each stage but the last (None: none).
    input_shape, input_range, info
        As for :class:`~lipcert.Network`.
    """

    stages: tuple[Stage, ...]
    activations: tuple[Activation | None, ...]
    input_shape: tuple[int, ...]
    input_range: tuple[float, float] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    is_graph: ClassVar[bool] = True

    # ------------------------------------------------------------------ shape facts
    @property
    def input_dim(self) -> int:
        return self.stages[0].input_dim

    @property
    def output_dim(self) -> int:
        return self.stages[-1].output_dim

    @property
    def widths(self) -> tuple[int, ...]:
        """(n_0, then the output size of every stage): the sizes of the tensors between stages."""
        return (self.input_dim,) + tuple(s.output_dim for s in self.stages)

    @property
    def activation_names(self) -> tuple[str, ...]:
        """Names of every activation in evaluation order (inside chains and branches, and between stages)."""
        names: list[str] = []
        for stage, act in zip(self.stages, self.activations + (None,)):
            names += [] if isinstance(stage, NormPool) else (
                stage.branch if isinstance(stage, Residual | NormResidual) else stage).activation_names
            names += [] if act is None else [act.name]
        return tuple(names)

    @property
    def num_parameters(self) -> int:
        return sum(net.num_parameters for net in self.chains()) + sum(
            _shortcut_array(s.shortcut).numel() for s in self.stages
            if isinstance(s, Residual) and s.shortcut is not None)

    @property
    def has_operators(self) -> bool:
        """True if some chain or shortcut keeps a convolution as an operator (docs/decisions.md 51)."""
        return any(c.has_operators for c in self.chains()) or any(
            isinstance(s, Residual) and s.shortcut is not None and not isinstance(s.shortcut, torch.Tensor)
            for s in self.stages)

    def chains(self) -> list[Network]:
        """Every chain of the graph: the chain stages and the branches of the residual blocks."""
        return [s.branch if isinstance(s, Residual | NormResidual) else s for s in self.stages
                if not isinstance(s, NormPool)]

    def pools(self) -> list[NormPool]:
        """The L2-norm pooling stages, in evaluation order."""
        return [s for s in self.stages if isinstance(s, NormPool)]

    def cuts(self) -> list[Cut]:
        """The stages no recursion certificate passes through (poolings, L2-norm residuals), in order."""
        return [s for s in self.stages if isinstance(s, NormPool | NormResidual)]

    def between_slopes(self, t: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per-neuron (alpha, beta) of the activation after stage ``t`` (0-based), None if there is none."""
        act = self.activations[t]
        return None if act is None else act.neuron_slopes(self.stages[t].output_dim)

    def fingerprint(self) -> str:
        """sha256 over the structure and every stage's arrays (chains by their own fingerprint)."""
        h = hashlib.sha256(repr(("graph", self.input_shape)).encode())
        for stage, act in zip(self.stages, self.activations + (None,)):
            if isinstance(stage, Network):
                h.update(f"chain {stage.fingerprint()}".encode())
            elif isinstance(stage, NormPool):
                h.update(f"l2pool {stage.fingerprint()}".encode())
            elif isinstance(stage, NormResidual):
                h.update(f"l2residual {stage.branch.fingerprint()} {stage.eps!r}".encode())
            else:
                short = None if stage.shortcut is None else _shortcut_array(stage.shortcut)
                arrays = [a.numpy() for a in (short, stage.shortcut_bias) if a is not None]
                h.update(f"residual {stage.branch.fingerprint()} {stage.shortcut is None} "
                         f"{stage.shortcut_bias is None} {array_hash(*arrays)}".encode())
                if stage.shortcut is not None and not isinstance(stage.shortcut, torch.Tensor):
                    h.update(repr(stage.shortcut.key()).encode())
            h.update(repr(None if act is None else (act.name, act.mask)).encode())
        return h.hexdigest()

    @property
    def dense_nbytes(self) -> int:
        """Bytes of the float64 matrices of the dense form (every chain's and every non-identity shortcut's)."""
        return sum(c.dense_nbytes for c in self.chains()) + sum(
            8 * s.output_dim * s.input_dim for s in self.stages if isinstance(s, Residual) and s.shortcut is not None)

    def densified(self, max_bytes: int = DEFAULT_MAX_DENSE_BYTES) -> GraphNetwork:
        """The same graph with every operator (in chains and shortcuts) materialized (itself if dense).

        Raises :class:`~lipcert.errors.DenseTooLargeError` (before allocating) above ``max_bytes`` of dense
        matrices in all.
        """
        if not self.has_operators:
            return self
        if self.dense_nbytes > max_bytes:
            raise DenseTooLargeError(f"the dense form of this graph needs {self.dense_nbytes / 1e9:.3g} GB of weight "
                                     f"matrices, over the limit of {max_bytes / 1e9:.3g} GB; use a matrix-free bound "
                                     "(naive, or the per-frequency closed forms on each chain) or raise the limit")
        stages = [s if isinstance(s, NormPool) else s.densified(max_bytes) if isinstance(s, Network) else
                  replace(s, branch=s.branch.densified(max_bytes)) if isinstance(s, NormResidual) else
                  Residual(s.branch.densified(max_bytes), None if s.shortcut is None else s.shortcut_matrix(max_bytes),
                           s.shortcut_bias) for s in self.stages]
        return replace(self, stages=tuple(stages))

    def with_info(self, **info: Any) -> GraphNetwork:
        """A copy with more provenance recorded in ``info``."""
        return replace(self, info={**self.info, **info})

    # ------------------------------------------------------------------ evaluation
    def forward_flat(self, z: torch.Tensor, hook: Hook | None = None, cut_hook: CutHook | None = None
                     ) -> torch.Tensor:
        """f on a flat batch (B, n_0) in its dtype; ``hook`` replaces every activation (see :data:`Hook`),
        ``cut_hook`` every pooling and L2-norm residual stage (:data:`CutHook`)."""
        site, cuts = [0], 0
        for t, stage in enumerate(self.stages):
            if isinstance(stage, Network):
                z = chain_flat(stage, z, hook, site)
            elif isinstance(stage, NormPool):
                z = stage.forward_flat(z) if cut_hook is None else cut_hook(cuts, stage, z, None)
                cuts += 1
            elif isinstance(stage, NormResidual):
                out = chain_flat(stage.branch, z, hook, site)
                z = stage.merge(z, out) if cut_hook is None else cut_hook(cuts, stage, z, out)
                cuts += 1
            else:
                z = stage.apply_shortcut(z) + chain_flat(stage.branch, z, hook, site)
            act = self.activations[t] if t < len(self.activations) else None
            if act is not None:
                alpha, beta = act.neuron_slopes(z.shape[1])
                z = act(z) if hook is None else hook(site[0], act, alpha, beta, z)
                site[0] += 1
        return z

    def forward(self, x: ArrayLike) -> ArrayLike:
        """Outputs f(x) for a batch (B, *input_shape) or one input, in float64 (as :meth:`Network.forward`)."""
        return batched(x, self.input_shape, lambda flat: self.forward_flat(flat.to(torch.float64)))

    __call__ = forward

    def __repr__(self) -> str:
        parts = []
        for stage, act in zip(self.stages, self.activations + (None,)):
            if isinstance(stage, Network):
                parts.append(f"chain{list(stage.widths)}")
            elif isinstance(stage, NormPool):
                parts.append(f"l2pool({stage.label}, {stage.input_dim} -> {stage.output_dim})")
            elif isinstance(stage, NormResidual):
                parts.append(f"l2residual(chain{list(stage.branch.widths)}, eps={stage.eps:g})")
            else:
                short = ("identity" if stage.shortcut is None else f"linear {tuple(stage.shortcut.shape)}"
                         if isinstance(stage.shortcut, torch.Tensor) else stage.shortcut.describe())
                parts.append(f"residual({short} + chain{list(stage.branch.widths)})")
            if act is not None:
                parts.append(act.name)
        return (f"GraphNetwork([{', '.join(parts)}], input_shape={self.input_shape}, "
                f"parameters={self.num_parameters})")


AnyNetwork = Network | GraphNetwork
"""What the verbs that handle residual blocks take: a chain or a graph."""


def chain_flat(net: Network, z: torch.Tensor, hook: Hook | None = None, site: list[int] | None = None) -> torch.Tensor:
    """A chain on a flat batch, with ``hook`` in place of its activations (``site[0]`` counts them)."""
    if hook is None:
        return net._forward_flat(z)
    site = [0] if site is None else site
    ops = list(net.operators) if net.operators else [None] * net.depth
    for k, (w, b, op) in enumerate(zip(net.weights, net.biases, ops)):
        z = (z @ w.to(z.dtype).T if op is None else op.matmat(z)) + b.to(z.dtype)
        if k < len(net.activations):
            z = hook(site[0], net.activations[k], net.alphas[k], net.betas[k], z)
            site[0] += 1
    return z


def _shortcut_array(shortcut: torch.Tensor | LinearOperator) -> torch.Tensor:
    """The array that holds a shortcut's weights: the matrix, or an operator's kernel."""
    return shortcut if isinstance(shortcut, torch.Tensor) else shortcut.kernel


def _layer_specs(net: Network) -> list[Any]:
    ops = list(net.operators) if net.operators else [None] * net.depth
    return [w if op is None else op for w, op in zip(net.weights, ops)]


def _join(a: Network, act: Activation | None, b: Network) -> Network:
    """The chain b o act o a (act None: b o a, the two affine maps multiplied into one)."""
    between = act if act is not None else get_activation("identity")
    return Network.from_weights(_layer_specs(a) + _layer_specs(b), list(a.biases) + list(b.biases),
                                list(a.activations) + [between] + list(b.activations))


def _check_residual(stage: Residual, t: int) -> Residual:
    if not isinstance(stage.branch, Network):
        raise ShapeMismatchError(f"stage {t + 1}: a residual branch must be a chain Network, got "
                                 f"{type(stage.branch).__name__}")
    n_in, n_out = stage.branch.input_dim, stage.branch.output_dim
    shortcut = (stage.shortcut if stage.shortcut is None or isinstance(stage.shortcut, LinearOperator)
                else _as_tensor(stage.shortcut, f"stage {t + 1} shortcut"))
    bias = None if stage.shortcut_bias is None else _as_tensor(stage.shortcut_bias, f"stage {t + 1} shortcut bias")
    if shortcut is None and n_in != n_out:
        raise ShapeMismatchError(f"stage {t + 1}: an identity shortcut needs a branch with as many outputs as inputs, "
                                 f"got {n_in} -> {n_out}")
    if shortcut is not None and tuple(shortcut.shape) != (n_out, n_in):
        raise ShapeMismatchError(f"stage {t + 1}: the shortcut has shape {tuple(shortcut.shape)} but the branch maps "
                                 f"{n_in} -> {n_out} entries (expected ({n_out}, {n_in}))")
    if bias is not None and tuple(bias.shape) != (n_out,):
        raise ShapeMismatchError(f"stage {t + 1}: the shortcut bias has shape {tuple(bias.shape)}, expected ({n_out},)")
    return Residual(stage.branch, shortcut, bias)


def _as_chain(stage: Residual) -> Network | None:
    """The chain a residual block is when it has no real skip: a zero shortcut, or a linear branch."""
    if stage.shortcut is not None and not bool(_shortcut_array(stage.shortcut).any()):
        g = stage.branch
        if stage.shortcut_bias is None:
            return g
        return Network.from_weights(_layer_specs(g), list(g.biases[:-1]) + [g.biases[-1] + stage.shortcut_bias],
                                    list(g.activations))
    if stage.branch.depth == 1 and not stage.branch.has_operators:
        w = stage.shortcut_matrix() + stage.branch.weights[0]
        b = stage.branch.biases[0] + (0.0 if stage.shortcut_bias is None else stage.shortcut_bias)
        return Network.from_weights([w], [b])
    return None


def graph_network(stages: Sequence[Stage], activations: Sequence[Activation | str | None] | None = None, *,
                  input_shape: Sequence[int] | None = None, input_range: tuple[float, float] | None = None,
                  info: dict[str, Any] | None = None) -> Network | GraphNetwork:
    """A network of stages, normalized; a plain :class:`~lipcert.Network` when it is a chain.

    Parameters
    ----------
    stages : sequence of Network, Residual, NormPool or NormResidual
        The stages in evaluation order (chains take flat vectors; their own input shapes are ignored).
    activations : sequence of Activation, activation name or None, optional
        One per gap between stages (default: none); None is no activation.
    input_shape, input_range, info
        As for :meth:`Network.from_weights`; ``input_shape`` defaults to (n_0,).

    Linear residual blocks (S x + W x + b, no activation in g) become the affine map (S + W) x + b, zero
    shortcuts leave g, and stages with no activation between them, or only an activation, are joined
    into one chain; each rewrite computes the same function (up to rounding of S + W and of W_2 W_1).

    Raises
    ------
    ShapeMismatchError
        A stage whose input size is not its predecessor's output size, an identity shortcut around a
        branch that changes the size, a shortcut of the wrong shape, no stage, activations of the wrong count.
    """
    stages = list(stages)
    if not stages:
        raise ShapeMismatchError("a graph network needs at least one stage")
    acts: list[Activation | None] = [None] * (len(stages) - 1) if activations is None else [
        None if a is None else get_activation(a) for a in activations]
    if len(acts) != len(stages) - 1:
        raise ShapeMismatchError(f"{len(stages)} stages need {len(stages) - 1} activations between them, got {len(acts)}")
    checked: list[Stage] = []
    for t, stage in enumerate(stages):
        if isinstance(stage, Residual):
            stage = _check_residual(stage, t)
            stage = _as_chain(stage) or stage
        elif not isinstance(stage, Network | NormPool | NormResidual):
            raise ShapeMismatchError(f"stage {t + 1} must be a Network, a Residual, a NormPool or a NormResidual, "
                                     f"got {type(stage).__name__}")
        if t > 0 and stage.input_dim != checked[-1].output_dim:
            raise ShapeMismatchError(f"stage {t + 1} takes {stage.input_dim} inputs but stage {t} has "
                                     f"{checked[-1].output_dim} outputs")
        checked.append(stage)
    out_stages: list[Stage] = [checked[0]]
    out_acts: list[Activation | None] = []
    for stage, act in zip(checked[1:], acts):
        prev = out_stages[-1]
        if isinstance(prev, Network) and isinstance(stage, Network):
            out_stages[-1] = _join(prev, act, stage)
        else:
            out_stages.append(stage)
            out_acts.append(act)
    n0 = out_stages[0].input_dim
    shape = (n0,) if input_shape is None else tuple(int(s) for s in input_shape)
    if math.prod(shape) != n0:
        raise ShapeMismatchError(f"input shape {shape} has {math.prod(shape)} entries but the first stage takes {n0}")
    if len(out_stages) == 1 and isinstance(out_stages[0], Network):
        net = out_stages[0]
        return Network._normalized(list(net.weights), list(net.biases), list(net.activations), list(net.alphas),
                                   list(net.betas), shape, input_range, dict(info or {}), list(net.operators))
    return GraphNetwork(tuple(out_stages), tuple(out_acts), shape, input_range, dict(info or {}))

