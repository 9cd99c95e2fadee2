"""lipcert's one internal network representation.

A :class:`Network` is the chain f(x) = W_L phi_{L-1}(... phi_1(W_1 x + b_1) ...) + b_L of L dense
float64 affine maps separated by L-1 elementwise activations, each neuron of hidden layer k
slope-restricted on [alpha_kj, beta_kj].  Adapters (torch, ONNX) build it; bounds read it; the
certifier evaluates it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from .activations import Activation, get_activation
from .errors import (DenseTooLargeError, GraphNetworkError, InvalidWeightsError, NonFiniteWeightsError,
                     NotANetworkError, OperatorLayersError, ShapeMismatchError, UnknownActivationError)
from .operators import DEFAULT_MAX_DENSE_BYTES, LinearOperator

ArrayLike = np.ndarray | torch.Tensor
LinearSpec = ArrayLike | LinearOperator
ActivationSpec = str | Activation | tuple[float, float]


def _as_tensor(a: Any, what: str) -> torch.Tensor:
    if (a.is_complex() if isinstance(a, torch.Tensor) else np.iscomplexobj(a)):
        raise InvalidWeightsError(f"{what} is complex; lipcert bounds real networks (pass the real part "
                                  "explicitly if that is what the model computes)")
    if isinstance(a, torch.Tensor):
        t = a.detach().to("cpu", torch.float64)
    else:
        try:
            t = torch.as_tensor(np.asarray(a, dtype=np.float64))
        except (TypeError, ValueError) as exc:
            raise InvalidWeightsError(f"{what} is not a numeric array: {exc}") from exc
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise NonFiniteWeightsError(f"{what} has {bad} non-finite entries (NaN or inf)")
    return t


@dataclass(frozen=True, eq=False)
class Network:
    """Feed-forward chain of affine maps and slope-restricted elementwise activations.

    Attributes
    ----------
    weights : tuple of Tensor
        W_1..W_L, float64, W_k of shape (n_k, n_{k-1}).
    biases : tuple of Tensor
        b_1..b_L, float64, b_k of shape (n_k,).
    activations : tuple of Activation
        phi_1..phi_{L-1}, one per hidden layer.
    alphas, betas : tuple of Tensor
        Per-neuron slope bounds of each hidden layer (shape (n_k,)).
    input_shape : tuple of int
        Shape of one input (without batch); prod(input_shape) = n_0.
    input_range : (float, float) or None
        Range of valid input values, if known (e.g. (0, 1) for pixels).
    info : dict
        Provenance written by adapters: source, input space, conversion error, preprocessing.
    operators : tuple of LinearOperator or None
        Empty for a dense network; else one entry per layer: the operator (a convolution) that is
        the layer's linear map, whose ``weights`` entry is then a shape-only placeholder on torch's
        meta device (docs/decisions.md 21), or None for a dense layer.
    """

    weights: tuple[torch.Tensor, ...]
    biases: tuple[torch.Tensor, ...]
    activations: tuple[Activation, ...]
    alphas: tuple[torch.Tensor, ...]
    betas: tuple[torch.Tensor, ...]
    input_shape: tuple[int, ...]
    input_range: tuple[float, float] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    operators: tuple[LinearOperator | None, ...] = ()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_weights(
        cls,
        weights: Sequence[LinearSpec],
        biases: Sequence[ArrayLike | None] | None = None,
        activation: ActivationSpec | Sequence[ActivationSpec] = "relu",
        *,
        input_shape: Sequence[int] | None = None,
        input_range: tuple[float, float] | None = None,
        info: dict[str, Any] | None = None,
    ) -> Network:
        """Build a network from L weight matrices (out, in) and optional biases.

        ``activation`` is one name for every hidden layer or a list of L-1 names; names and
        their slopes are in :mod:`lipcert.activations`; an explicit ``(alpha, beta)`` pair is
        accepted too.  A weight may be a :class:`~lipcert.operators.Conv2dOperator` (kept as an
        operator, never materialized here).  Consecutive affine maps with a linear activation between them are
        multiplied into one, and dead neurons (zero rows) are removed, their constant output
        folded into the next bias, so the function is unchanged.
        """
        if isinstance(weights, str | bytes | np.ndarray | torch.Tensor) or not isinstance(weights, Iterable):
            raise ShapeMismatchError(f"weights must be a sequence of 2-D matrices (one per layer), got "
                                     f"{type(weights).__name__}")
        weights = list(weights)
        if len(weights) == 0:
            raise ShapeMismatchError("a network needs at least one weight matrix")
        ops = [w if isinstance(w, LinearOperator) else None for w in weights]
        ws = [_placeholder(w) if isinstance(w, LinearOperator) else _as_tensor(w, f"weight {k + 1}")
              for k, w in enumerate(weights)]
        for k, w in enumerate(ws):
            if w.ndim != 2:
                raise ShapeMismatchError(f"weight {k + 1} must be a 2-D (out, in) matrix, got shape "
                                         f"{tuple(w.shape)}")
        if biases is None:
            biases = [None] * len(ws)
        if isinstance(biases, str | bytes | np.ndarray | torch.Tensor) or not isinstance(biases, Iterable):
            raise ShapeMismatchError(f"biases must be a sequence of vectors (one per layer) or None, got "
                                     f"{type(biases).__name__}")
        biases = list(biases)
        if len(biases) != len(ws):
            raise ShapeMismatchError(f"{len(ws)} weight matrices but {len(biases)} biases")
        bs = []
        for k, (w, b) in enumerate(zip(ws, biases)):
            bt = torch.zeros(w.shape[0], dtype=torch.float64) if b is None else _as_tensor(b, f"bias {k + 1}")
            if bt.shape != (w.shape[0],):
                raise ShapeMismatchError(f"bias {k + 1} has shape {tuple(bt.shape)}, expected ({w.shape[0]},)")
            bs.append(bt)
        n_hidden = len(ws) - 1
        if isinstance(activation, str | Activation | tuple):
            acts = [get_activation(activation)] * n_hidden
        elif not isinstance(activation, Iterable):
            raise UnknownActivationError(f"activation must be a name (e.g. 'relu'), an (alpha, beta) slope pair "
                                         f"or a list of them, got {type(activation).__name__} {activation!r}")
        else:
            acts = [get_activation(a) for a in activation]
            if len(acts) != n_hidden:
                raise ShapeMismatchError(f"{len(ws)} weight matrices need {n_hidden} activations, "
                                         f"got {len(acts)}")
        n0 = ws[0].shape[1]
        shape = tuple(int(s) for s in input_shape) if input_shape is not None else (n0,)
        slopes = [a.neuron_slopes(w.shape[0]) for w, a in zip(ws, acts)]
        alphas, betas = [s[0] for s in slopes], [s[1] for s in slopes]
        return cls._normalized(ws, bs, acts, alphas, betas, shape, input_range, dict(info or {}), ops)

    @classmethod
    def _normalized(cls, ws: list[torch.Tensor], bs: list[torch.Tensor], acts: list[Activation],
                    alphas: list[torch.Tensor], betas: list[torch.Tensor], shape: tuple[int, ...],
                    input_range: tuple[float, float] | None, info: dict[str, Any],
                    operators: Sequence[LinearOperator | None] = ()) -> Network:
        if math.prod(shape) != ws[0].shape[1]:
            raise ShapeMismatchError(f"input shape {shape} has {math.prod(shape)} entries but the first "
                                     f"weight matrix takes {ws[0].shape[1]}")
        for k in range(1, len(ws)):
            if ws[k].shape[1] != ws[k - 1].shape[0]:
                raise ShapeMismatchError(
                    f"weight {k + 1} takes {ws[k].shape[1]} inputs but weight {k} has {ws[k - 1].shape[0]} outputs")
        ws, bs, acts, alphas, betas = list(ws), list(bs), list(acts), list(alphas), list(betas)
        if any(op is not None for op in operators):
            if any(a.is_linear for a in acts):
                raise OperatorLayersError("a linear activation next to operator layers: the maps cannot be "
                                          "multiplied into one without materializing them; densify the layers")
            ops = tuple(operators)
            return cls(tuple(ws), tuple(bs), tuple(acts), tuple(alphas), tuple(betas), shape, input_range, info, ops)
        # Fold linear activations: W_{k+1} (a (W_k x + b_k)) + b_{k+1}.
        k = 0
        while k < len(acts):
            if acts[k].is_linear:
                a = acts[k].alpha
                bs[k + 1] = bs[k + 1] + a * (ws[k + 1] @ bs[k])
                ws[k + 1] = a * (ws[k + 1] @ ws[k])
                del ws[k], bs[k], acts[k], alphas[k], betas[k]
            else:
                k += 1
        # Remove dead neurons (zero rows): their output phi(b_i) is constant.
        for k in range(len(acts)):
            dead = (ws[k] == 0).all(dim=1)
            if not bool(dead.any()):
                continue
            if acts[k].fn is not None:
                bs[k + 1] = bs[k + 1] + ws[k + 1][:, dead] @ acts[k].restricted(dead)(bs[k][dead])
            keep = ~dead
            ws[k], bs[k], alphas[k], betas[k] = ws[k][keep], bs[k][keep], alphas[k][keep], betas[k][keep]
            if bool(keep.any()):
                acts[k] = acts[k].restricted(keep)
            ws[k + 1] = ws[k + 1][:, keep]
            if not bool(keep.any()):  # the output does not depend on the input
                const = bs[k + 1] if k + 1 == len(ws) - 1 else None
                net = cls(tuple(ws), tuple(bs), tuple(acts), tuple(alphas), tuple(betas), shape, input_range, info)
                if const is None:
                    const = net._forward_flat(torch.zeros(1, ws[0].shape[1], dtype=torch.float64))[0]
                zero = torch.zeros(ws[-1].shape[0], ws[0].shape[1], dtype=torch.float64)
                return cls((zero,), (const,), (), (), (), shape, input_range, info)
        return cls(tuple(ws), tuple(bs), tuple(acts), tuple(alphas), tuple(betas), shape, input_range, info)

    # ------------------------------------------------------------------ shape facts
    @property
    def depth(self) -> int:
        """Number L of weight matrices (L-1 hidden layers)."""
        return len(self.weights)

    @property
    def widths(self) -> tuple[int, ...]:
        """(n_0, n_1, ..., n_L)."""
        return (self.weights[0].shape[1],) + tuple(w.shape[0] for w in self.weights)

    @property
    def input_dim(self) -> int:
        return self.weights[0].shape[1]

    @property
    def output_dim(self) -> int:
        return self.weights[-1].shape[0]

    @property
    def activation_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.activations)

    @property
    def num_parameters(self) -> int:
        return sum((w.numel() if op is None else op.kernel.numel()) + b.numel()
                   for w, b, op in zip(self.weights, self.biases, self._layer_ops()))

    def fingerprint(self) -> str:
        """sha256 over the float64 weights, biases, slopes, activation names (and masks) and input shape.

        Two networks with the same fingerprint compute the same function (the normalization a model
        carries is part of W_1, b_1), so a bound or a run recorded with it belongs to this network.
        """
        weights = [w if op is None else op.kernel for w, op in zip(self.weights, self._layer_ops())]
        arrays = [t.numpy() for t in (*weights, *self.biases, *self.alphas, *self.betas)]
        h = hashlib.sha256(array_hash(*arrays).encode())
        h.update(repr((self.activation_names, self.input_shape)).encode())
        masks = [a.mask for a in self.activations]
        if any(m is not None for m in masks):  # activations acting on some neurons only
            h.update(repr(masks).encode())
        if self.has_operators:  # an operator layer hashes its kernel (above) and its geometry
            h.update(repr([None if op is None else op.key() for op in self.operators]).encode())
        return h.hexdigest()

    # ------------------------------------------------------------------ operator layers
    @property
    def has_operators(self) -> bool:
        """True if some layer keeps its linear map as an operator (docs/decisions.md 21)."""
        return any(op is not None for op in self.operators)

    def _layer_ops(self) -> list[LinearOperator | None]:
        return list(self.operators) if self.operators else [None] * len(self.weights)

    @property
    def dense_nbytes(self) -> int:
        """Bytes of the float64 weight matrices of the dense form (placeholders counted at full size)."""
        return sum(8 * w.shape[0] * w.shape[1] for w in self.weights)

    def densified(self, max_bytes: int = DEFAULT_MAX_DENSE_BYTES) -> Network:
        """The same network with every operator materialized as a dense matrix (itself if dense).

        Raises :class:`~lipcert.errors.DenseTooLargeError` (before allocating) if the dense matrices
        need more than ``max_bytes``.
        """
        if not self.has_operators:
            return self
        if self.dense_nbytes > max_bytes:
            big = max(self.widths)
            raise DenseTooLargeError(f"the dense form of this network needs {self.dense_nbytes / 1e9:.3g} GB of weight "
                                     f"matrices (widest layer {big}), over the limit of {max_bytes / 1e9:.3g} GB; "
                                     "use the matrix-free method naive or raise the limit")
        ws = [w if op is None else op.dense(max_bytes) for w, op in zip(self.weights, self._layer_ops())]
        return Network._normalized(ws, list(self.biases), list(self.activations), list(self.alphas),
                                   list(self.betas), self.input_shape, self.input_range, dict(self.info))

    def slopes(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-neuron (alpha_k, beta_k) of every hidden layer."""
        return list(zip(self.alphas, self.betas))

    def with_info(self, **info: Any) -> Network:
        """A copy with more provenance recorded in ``info``."""
        return replace(self, info={**self.info, **info})

    def with_last_layer(self, weight: ArrayLike, bias: ArrayLike | None = None) -> Network:
        """The same network with W_L replaced (for example by c^T W_L for a margin direction c)."""
        w = _as_tensor(weight, "last weight")
        if w.ndim == 1:
            w = w[None, :]
        b = torch.zeros(w.shape[0], dtype=torch.float64) if bias is None else _as_tensor(bias, "last bias")
        ops = self._layer_ops()[:-1] + [None] if self.has_operators else []
        return Network._normalized(list(self.weights[:-1]) + [w], list(self.biases[:-1]) + [b],
                                   list(self.activations), list(self.alphas), list(self.betas),
                                   self.input_shape, self.input_range, dict(self.info), ops)

    # ------------------------------------------------------------------ evaluation
    def _forward_flat(self, z: torch.Tensor) -> torch.Tensor:
        for k, (w, b, op) in enumerate(zip(self.weights, self.biases, self._layer_ops())):
            z = (z @ w.to(z.dtype).T if op is None else op.matmat(z)) + b.to(z.dtype)
            if k < len(self.activations):
                z = self.activations[k](z)
        return z

    def forward(self, x: ArrayLike) -> ArrayLike:
        """Outputs f(x) for a batch x of shape (B, *input_shape) (or one input of ``input_shape``).

        Computed in float64 (or the dtype of a floating torch input of higher precision);
        returns the same kind of array it was given, with shape (B, n_L) or (n_L,).
        """
        device = self.biases[0].device
        return batched(x, self.input_shape, lambda flat: self._forward_flat(flat.to(dtype=torch.float64, device=device)))

    __call__ = forward

    def __repr__(self) -> str:
        acts = ", ".join(self.activation_names) or "none"
        return (f"Network(widths={list(self.widths)}, activations=[{acts}], "
                f"input_shape={self.input_shape}, parameters={self.num_parameters})")


def require_network(net: Any, verb: str, *, operators: bool = False, max_bytes: int | None = None) -> Network:
    """``net`` itself when it is a :class:`Network`, else :class:`~lipcert.errors.NotANetworkError`.

    For the functions below the verbs, which take a loaded Network only; the public verbs
    (``lipcert.lipschitz``, ``lipcert.certify``, ...) load any model first.  Unless ``operators``
    (the caller handles operator layers), a network with operator layers is returned densified
    (:meth:`Network.densified`, at most ``max_bytes``, default 4 GB, of dense matrices), or a
    :class:`~lipcert.errors.DenseTooLargeError` naming ``verb`` says why it cannot be; a
    :class:`~lipcert.graph.GraphNetwork` is a :class:`~lipcert.errors.GraphNetworkError` naming ``verb``.
    """
    if getattr(net, "is_graph", False):
        kinds = "residual blocks" + (" or L2-norm pooling / residual stages" if getattr(net, "cuts", list)() else "")
        raise GraphNetworkError(f"{verb} needs a chain network, but this one has {kinds} (a "
                                f"GraphNetwork: {net!r}); such graphs are supported by lipschitz, lower_bound, "
                                "attack and certify (global radii; local radii without pooling / L2-norm residual "
                                "stages: lipcert.local.graph_local_bound); docs/decisions.md 28, 43, 45")
    if not isinstance(net, Network):
        raise NotANetworkError(f"{verb} needs a lipcert.Network, got {type(net).__name__}: load the model first "
                               "with lipcert.load(model, input_shape=...) (the verbs lipcert.lipschitz, "
                               "lipcert.certify, ... load paths and torch modules themselves)")
    if net.has_operators and not operators:
        layers = [k + 1 for k, op in enumerate(net.operators) if op is not None]
        try:
            return net.densified(DEFAULT_MAX_DENSE_BYTES if max_bytes is None else max_bytes)
        except DenseTooLargeError as exc:
            raise DenseTooLargeError(f"{verb} needs dense weight matrices, but layers {layers} of this network are "
                                     f"convolution operators: {exc}") from None
    return net


class OperatorPlaceholder(torch.Tensor):
    """The ``weights`` entry of an operator layer: a (rows, cols) float64 meta tensor that holds no memory
    and refuses every computation.

    Its shape, dtype and device can be read; any other torch operation raises
    :class:`~lipcert.errors.OperatorLayersError`.  A plain meta tensor would not do: ``cpu_tensor @ meta``
    returns an uninitialized CPU tensor in torch 2.13 instead of raising, so code that forgot the
    operator would compute garbage silently.
    """

    _READABLE = frozenset({"shape", "dtype", "device", "ndim", "size", "dim", "numel", "is_meta", "requires_grad",
                           "__repr__", "__format__", "is_complex", "is_floating_point", "layout"})

    @staticmethod
    def __new__(cls, shape: tuple[int, ...]) -> OperatorPlaceholder:
        return torch.Tensor._make_subclass(cls, torch.empty(shape, dtype=torch.float64, device="meta"))

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", "")
        if name == "__get__":  # a property such as .shape or .T: its descriptor's name
            name = getattr(getattr(func, "__self__", None), "__name__", "")
        if name in cls._READABLE:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **(kwargs or {}))
        raise OperatorLayersError(f"{name or func} on the weights entry of an operator layer (a convolution kept as "
                                  "an operator): use Network.operators[k], or net.densified() for dense matrices")


def batched(x: ArrayLike, input_shape: tuple[int, ...], forward_flat: Callable[[torch.Tensor], torch.Tensor]
            ) -> ArrayLike:
    """``forward_flat`` (rows of flattened inputs -> rows of outputs) applied to a batch (B, *input_shape) or one
    input of ``input_shape``; returns the kind of array it was given (numpy, or torch on the input's device),
    with shape (B, n_L) or (n_L,)."""
    is_numpy = not isinstance(x, torch.Tensor)
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    single = tuple(t.shape) == input_shape
    if not single and tuple(t.shape[1:]) != input_shape:
        raise ShapeMismatchError(f"expected inputs of shape (B, {', '.join(map(str, input_shape))}) "
                                 f"or {input_shape}, got {tuple(t.shape)}")
    out = forward_flat(t.reshape(1 if single else t.shape[0], -1))
    if single:
        out = out[0]
    return out.numpy() if is_numpy else out.to(t.device)


def _placeholder(op: LinearOperator) -> torch.Tensor:
    """An :class:`OperatorPlaceholder` of the operator's (rows, cols) shape."""
    return OperatorPlaceholder(tuple(op.shape))


def array_hash(*arrays: np.ndarray) -> str:
    """sha256 over the dtype, shape and bytes of each array in turn."""
    h = hashlib.sha256()
    for a in arrays:
        c = np.ascontiguousarray(a)
        h.update(str((c.dtype.str, c.shape)).encode())
        h.update(c.tobytes())
    return h.hexdigest()
