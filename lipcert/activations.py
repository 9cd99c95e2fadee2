"""Elementwise activations and their slope bounds.

An activation phi is *slope-restricted* on [alpha, beta] when
alpha <= (phi(a) - phi(b)) / (a - b) <= beta for all a != b.  Every Lipschitz bound in
lipcert uses only these two numbers per neuron; the function itself is kept so that a
:class:`~lipcert.network.Network` can evaluate itself and check a conversion.

Slope constants of SiLU and GELU are the extreme derivatives (computed to 30 digits with
mpmath) rounded *outward* in the 8th decimal, so the interval always contains the truth:
SiLU' ranges over [-0.0998393201, 1.0998393201], GELU' (erf) over [-0.1289041452, 1.1289041452],
GELU' (tanh approximation) over [-0.1289930687, 1.1289930687].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .errors import InvalidSlopeError, ShapeMismatchError, UnknownActivationError

Fn = Callable[[torch.Tensor], torch.Tensor]

SILU_SLOPES = (-0.09983933, 1.09983933)
GELU_SLOPES = (-0.12890415, 1.12890415)
GELU_TANH_SLOPES = (-0.12899307, 1.12899307)


@dataclass(frozen=True)
class Activation:
    """An elementwise activation with slope bounds [alpha, beta].

    Attributes
    ----------
    name : str
        Canonical name, with its parameter if any (``"leaky_relu(0.1)"``).
    alpha, beta : float
        Slope bounds shared by every neuron that uses this activation.
    fn : callable or None
        The function on torch tensors; ``None`` for an activation given only by its slopes,
        which can be bounded but not evaluated.
    derivative : callable or None
        phi' (one-sided where phi is not differentiable), used by the Jacobian lower bound.
    mask : tuple of bool or None
        For an activation that acts on some neurons of its layer only (:func:`abs_or_identity`,
        :func:`on_neurons`): True where neuron j applies phi, False where it is the identity (slopes [1, 1]).
    """

    name: str
    alpha: float
    beta: float
    fn: Fn | None = field(default=None, compare=False, repr=False)
    derivative: Fn | None = field(default=None, compare=False, repr=False)
    mask: tuple[bool, ...] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.alpha) and math.isfinite(self.beta)):
            raise InvalidSlopeError(f"activation {self.name!r}: slopes must be finite, got "
                                    f"[{self.alpha}, {self.beta}]")
        if self.alpha > self.beta:
            raise InvalidSlopeError(f"activation {self.name!r}: alpha={self.alpha} > beta={self.beta}")

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        if self.fn is None:
            raise UnknownActivationError(
                f"activation {self.name!r} is given only by its slope bounds and cannot be evaluated")
        return self.fn(z)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled as what rebuilds it (its name, mask or slopes), not as its functions: lambdas and
        closures do not pickle by reference, and by value they drag their module's globals along."""
        if self.mask is not None and self.name == "abs_or_identity":
            return abs_or_identity, (list(self.mask),)
        if self.mask is not None:
            return on_neurons, (self.base(), list(self.mask))
        if self.fn is None:
            return slopes_only, (self.alpha, self.beta)
        return get_activation, (self.name,)

    def neuron_slopes(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-neuron (alpha, beta) of a layer of n neurons: [alpha, beta], or [1, 1] off the mask."""
        alpha = torch.full((n,), self.alpha, dtype=torch.float64)
        beta = torch.full((n,), self.beta, dtype=torch.float64)
        if self.mask is None:
            return alpha, beta
        if len(self.mask) != n:
            raise ShapeMismatchError(f"activation {self.name!r} has a mask of {len(self.mask)} neurons, "
                                     f"but its layer has {n}")
        on = torch.tensor(self.mask, dtype=torch.bool)
        return torch.where(on, alpha, 1.0), torch.where(on, beta, 1.0)

    def restricted(self, keep: torch.Tensor) -> Activation:
        """The activation of the neurons ``keep`` (a boolean tensor) of its layer (the same if unmasked)."""
        if self.mask is None:
            return self
        kept = [m for m, k in zip(self.mask, keep.tolist()) if k]
        return abs_or_identity(kept) if self.name == "abs_or_identity" else on_neurons(self.base(), kept)

    def base(self) -> Activation:
        """phi itself, on every neuron: the activation of the masked neurons (``abs`` for
        :func:`abs_or_identity`), or ``self`` when it has no mask."""
        if self.mask is None:
            return self
        if self.name == "abs_or_identity":
            return _FIXED["abs"]()
        return get_activation(self.name) if self.fn is not None else slopes_only(self.alpha, self.beta)

    @property
    def is_linear(self) -> bool:
        """True for phi(z) = alpha z (identity or a scaled identity) on every neuron, which folds into the weights."""
        return self.mask is None and (self.name == "identity" or self.name.startswith("linear("))


def _sigmoid_prime(z: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(z)
    return s * (1 - s)


def _silu_prime(z: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def _gelu_prime(z: torch.Tensor) -> torch.Tensor:
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return cdf + z * pdf


def _gelu_tanh_prime(z: torch.Tensor) -> torch.Tensor:
    k = math.sqrt(2 / math.pi)
    u = k * (z + 0.044715 * z**3)
    t = torch.tanh(u)
    return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * k * (1 + 3 * 0.044715 * z * z)


def relu() -> Activation:
    return Activation("relu", 0.0, 1.0, torch.relu, lambda z: (z > 0).to(z.dtype))


def leaky_relu(a: float = 0.01) -> Activation:
    return Activation(f"leaky_relu({a:g})", min(a, 1.0), max(a, 1.0),
                      lambda z: F.leaky_relu(z, a), lambda z: torch.where(z > 0, torch.ones_like(z), torch.full_like(z, a)))


def elu(a: float = 1.0) -> Activation:
    if a < 0:
        raise InvalidSlopeError(f"elu with negative alpha={a} is not monotone; not supported")
    return Activation("elu" if a == 1.0 else f"elu({a:g})", 0.0, max(1.0, a),
                      lambda z: F.elu(z, a), lambda z: torch.where(z > 0, 1.0, a * torch.exp(z)).to(z.dtype))


def softplus(b: float = 1.0) -> Activation:
    return Activation("softplus" if b == 1.0 else f"softplus({b:g})", 0.0, 1.0,
                      lambda z: F.softplus(z, beta=b), lambda z: torch.sigmoid(b * z))


def hardtanh(lo: float = -1.0, hi: float = 1.0) -> Activation:
    name = "hardtanh" if (lo, hi) == (-1.0, 1.0) else f"hardtanh({lo:g},{hi:g})"
    return Activation(name, 0.0, 1.0, lambda z: torch.clamp(z, lo, hi),
                      lambda z: ((z > lo) & (z < hi)).to(z.dtype))


def _sign(z: torch.Tensor) -> torch.Tensor:
    """A one-sided derivative of |z|: 1 for z >= 0, -1 for z < 0."""
    return torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def abs_or_identity(mask: Sequence[bool]) -> Activation:
    """|z_j| where ``mask[j]``, z_j elsewhere: slopes [-1, 1] and [1, 1] (the MaxMin rewrite, decisions 19).

    Acts on the last ``len(mask)`` entries of a tensor's flattened sample (a batch (B, n) or one
    sample of any shape with n entries).
    """
    flags = tuple(bool(m) for m in mask)
    if not flags:
        raise ShapeMismatchError("abs_or_identity needs a mask of at least one neuron")
    on = torch.tensor(flags, dtype=torch.bool)
    n = len(flags)

    def fn(z: torch.Tensor) -> torch.Tensor:
        flat = z.reshape(-1, n)
        return torch.where(on.to(z.device), flat.abs(), flat).reshape(z.shape)

    def derivative(z: torch.Tensor) -> torch.Tensor:
        flat = z.reshape(-1, n)
        return torch.where(on.to(z.device), _sign(flat), torch.ones_like(flat)).reshape(z.shape)

    return Activation("abs_or_identity", -1.0, 1.0, fn, derivative, flags)


def on_neurons(act: Activation, mask: Sequence[bool]) -> Activation:
    """``act`` on the neurons where ``mask`` is True, the identity on the others (slopes [1, 1] there).

    ``abs`` (or :func:`abs_or_identity`, whose mask is then spread over the True positions) gives
    :func:`abs_or_identity`; an all-True mask gives ``act``'s base itself.  Used to carry a residual
    block's shortcut through identity neurons beside its branch (:mod:`lipcert.graph_chain`).
    """
    flags = tuple(bool(m) for m in mask)
    if act.mask is not None:  # spread act's own mask over the neurons it acts on
        if sum(flags) != len(act.mask):
            raise ShapeMismatchError(f"activation {act.name!r} acts on {len(act.mask)} neurons, the mask selects "
                                     f"{sum(flags)}")
        inner = iter(act.mask)
        flags = tuple(next(inner) if f else False for f in flags)
        act = act.base()
    if not any(flags) or act.name == "identity":
        return get_activation("identity")
    if act.name == "abs":
        return abs_or_identity(flags)
    if all(flags):
        return act
    if act.fn is None:
        return Activation(act.name, act.alpha, act.beta, None, None, flags)
    on = torch.tensor(flags, dtype=torch.bool)
    n, fn, derivative = len(flags), act.fn, act.derivative

    def masked(z: torch.Tensor) -> torch.Tensor:
        flat = z.reshape(-1, n)
        return torch.where(on.to(z.device), fn(flat), flat).reshape(z.shape)

    def masked_derivative(z: torch.Tensor) -> torch.Tensor:
        assert derivative is not None
        flat = z.reshape(-1, n)
        return torch.where(on.to(z.device), derivative(flat), torch.ones_like(flat)).reshape(z.shape)

    return Activation(act.name, act.alpha, act.beta, masked, None if derivative is None else masked_derivative, flags)


def slopes_only(alpha: float, beta: float) -> Activation:
    """Any activation slope-restricted on [alpha, beta]; can be bounded, not evaluated."""
    return Activation(f"slope[{alpha:g},{beta:g}]", float(alpha), float(beta))


_FIXED: dict[str, Callable[[], Activation]] = {
    "relu": relu,
    "tanh": lambda: Activation("tanh", 0.0, 1.0, torch.tanh, lambda z: 1 - torch.tanh(z) ** 2),
    "elu": elu,
    "softplus": softplus,
    "sigmoid": lambda: Activation("sigmoid", 0.0, 0.25, torch.sigmoid, _sigmoid_prime),
    "leaky_relu": leaky_relu,
    "silu": lambda: Activation("silu", *SILU_SLOPES, F.silu, _silu_prime),
    "gelu": lambda: Activation("gelu", *GELU_SLOPES, F.gelu, _gelu_prime),
    "gelu_tanh": lambda: Activation("gelu_tanh", *GELU_TANH_SLOPES,
                                    lambda z: F.gelu(z, approximate="tanh"), _gelu_tanh_prime),
    "hardtanh": hardtanh,
    "relu6": lambda: Activation("relu6", 0.0, 1.0, lambda z: torch.clamp(z, 0.0, 6.0),
                                lambda z: ((z > 0) & (z < 6)).to(z.dtype)),
    "identity": lambda: Activation("identity", 1.0, 1.0, lambda z: z, torch.ones_like),
    "abs": lambda: Activation("abs", -1.0, 1.0, torch.abs, _sign),
}
_ALIASES = {"swish": "silu", "leakyrelu": "leaky_relu", "linear": "identity", "none": "identity"}

KNOWN_ACTIVATIONS = tuple(sorted(_FIXED))


def get_activation(spec: str | Activation | tuple[float, float]) -> Activation:
    """Turn a name (``"relu"``, ``"leaky_relu(0.1)"``), an (alpha, beta) pair or an Activation into an Activation."""
    if isinstance(spec, Activation):
        return spec
    if isinstance(spec, tuple | list):
        if len(spec) != 2:
            raise InvalidSlopeError(f"slope bounds must be an (alpha, beta) pair, got {spec!r}")
        try:
            alpha, beta = float(spec[0]), float(spec[1])
        except (TypeError, ValueError):
            raise InvalidSlopeError(f"slope bounds must be two numbers (alpha, beta), got {spec!r}") from None
        return slopes_only(alpha, beta)
    if not isinstance(spec, str):
        raise UnknownActivationError(f"activation must be a name, an (alpha, beta) pair or an "
                                     f"Activation, got {type(spec).__name__}")
    name, _, rest = spec.strip().lower().partition("(")
    name = name.strip().replace("-", "_")  # in the name only: parameters may be negative
    name = _ALIASES.get(name, name)
    if name == "abs_or_identity":
        raise UnknownActivationError("activation 'abs_or_identity' needs its per-neuron mask: build it with "
                                     "lipcert.activations.abs_or_identity(mask)")
    if name not in _FIXED:
        raise UnknownActivationError(f"unknown activation {spec!r}; known: {', '.join(KNOWN_ACTIVATIONS)} "
                                     "or an explicit (alpha, beta) pair")
    if not rest:
        return _FIXED[name]()
    try:
        args = [float(a) for a in rest.rstrip(")").split(",") if a.strip()]
    except ValueError as exc:
        raise UnknownActivationError(f"cannot parse the parameters of activation {spec!r}") from exc
    try:
        return _FIXED[name](*args)
    except TypeError as exc:
        raise UnknownActivationError(f"activation {name!r} takes no parameters like {spec!r}") from exc
