"""The rounding error of a graph's float64 forward pass (lipcert/rounding.py's analysis through residual blocks).

Each chain carries the error bound E of its input through :func:`lipcert.rounding.logit_error_bound`; a
residual block y = S x + c + g(x) adds the shortcut's error ||S||_inf E + 2 gamma_{n+1} (max_i ||S_i|| ||x||
+ max |c|) (E alone for the identity), the branch's, and the rounding of the bias and the sum, u (max |S x + c| + max |y|) (doubled);
an activation between stages multiplies E by its largest |slope| and adds its own rounding, as in a chain;
an L2-norm pooling y_w = ||D_w x|| multiplies E by max_w ||sqrt(P_w)||_2 (|y_w(x + e) - y_w(x)| <= ||D_w e||)
and adds its own rounding, 2 gamma_{K+4} max |y| (K squares, their sum, the root); an L2-norm residual
sqrt(x^2/2 + g(x)^2/2 + eps), 1/sqrt(2)-Lipschitz in (x_i, g_i) per entry, turns the errors E of x and E_g of
g(x) into (E + E_g) / sqrt(2) and adds 16 u max |z| (two squares, two halvings, two sums and the root).
Every bound is per input and holds for every entry of the output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .activations import Activation
from .graph import AnyNetwork, Residual
from .network import Network
from .norm_pool import NormPool
from .norm_residual import NormResidual
from .rounding import (
    EXACT_ACTIVATIONS,
    UNIT_ROUNDOFF,
    ErrorLayer,
    error_layers,
    gamma,
    logit_error_bound,
)


@dataclass(frozen=True)
class ErrorBlock:
    """A residual block with the norms of its shortcut, and its branch's error layers."""

    block: Residual
    branch: list[ErrorLayer]
    row_abs: float      # ||S||_inf (1 for the identity)
    row_norm: float     # max row 2-norm of S
    bias_abs: float     # max |c|
    gamma: float        # 2 gamma_{n+1}


@dataclass(frozen=True)
class ErrorActivation:
    """An activation between stages and the largest |slope| of its neurons."""

    activation: Activation
    slope: float
    exact: bool


@dataclass(frozen=True)
class ErrorPool:
    """An L2-norm pooling with the factor max_w ||sqrt(P_w)|| and the relative rounding of its norms."""

    pool: NormPool
    factor: float
    gamma: float


@dataclass(frozen=True)
class ErrorNormResidual:
    """An L2-norm residual and its branch's error layers."""

    stage: NormResidual
    branch: list[ErrorLayer]


ErrorPlan = list[ErrorLayer] | list[list[ErrorLayer] | ErrorBlock | ErrorActivation | ErrorPool | ErrorNormResidual]


def error_plan(net: AnyNetwork) -> ErrorPlan:
    """What :func:`forward_error` needs of a network, computed once: a chain's error layers, or per stage."""
    if isinstance(net, Network):
        return error_layers(net)
    plan: list[list[ErrorLayer] | ErrorBlock | ErrorActivation | ErrorPool | ErrorNormResidual] = []
    for t, stage in enumerate(net.stages):
        if isinstance(stage, Network):
            plan.append(error_layers(stage))
        elif isinstance(stage, NormPool):
            plan.append(ErrorPool(stage, float(stage.weight.sum(1).max().sqrt()) * (1 + 1e-15),
                                  2 * gamma(int(stage.index.shape[1]) + 4)))
        elif isinstance(stage, NormResidual):
            plan.append(ErrorNormResidual(stage, error_layers(stage.branch)))
        else:
            s = _shortcut_layer(stage)
            c = stage.shortcut_bias
            plan.append(ErrorBlock(stage, error_layers(stage.branch),
                                   1.0 if s is None else s.row_abs,
                                   0.0 if s is None else s.row_norm,
                                   0.0 if c is None else float(c.abs().max()),
                                   0.0 if s is None else s.gamma))
        slopes = net.between_slopes(t) if t < len(net.activations) else None
        act = net.activations[t] if t < len(net.activations) else None
        if act is not None and slopes is not None:
            plan.append(ErrorActivation(act, float(torch.maximum(slopes[0].abs(), slopes[1].abs()).max()),
                                        act.name.split("(")[0] in EXACT_ACTIVATIONS))
    return plan


def _shortcut_layer(block: Residual) -> ErrorLayer | None:
    """The norms of a block's shortcut S (a matrix or a convolution operator, as a chain layer); None: identity."""
    s = block.shortcut
    if s is None:
        return None
    return error_layers(Network.from_weights([s], [torch.zeros(block.output_dim, dtype=torch.float64)]))[0]


def forward_error(plan: ErrorPlan, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 outputs of a flat batch and a bound (B,) on the rounding error of every output entry."""
    if not plan or isinstance(plan[0], ErrorLayer):
        return logit_error_bound(plan, x)  # type: ignore[arg-type]
    z, err = x, torch.zeros(x.shape[0], dtype=torch.float64)
    for step in plan:
        if isinstance(step, list):
            z, err = logit_error_bound(step, z, err)
        elif isinstance(step, ErrorBlock):
            short, short_err = z, step.row_abs * err
            if step.block.shortcut is not None:
                short_err = short_err + step.gamma * (step.row_norm * z.norm(dim=1) + step.bias_abs)
            short = step.block.apply_shortcut(z)
            branch, branch_err = logit_error_bound(step.branch, z, err)
            z = short + branch
            err = short_err + branch_err + 2 * UNIT_ROUNDOFF * (z.abs().max(dim=1).values + short.abs().max(dim=1).values)
        elif isinstance(step, ErrorPool):
            z = step.pool.forward_flat(z)
            err = step.factor * err + step.gamma * z.abs().max(dim=1).values
        elif isinstance(step, ErrorNormResidual):
            out, out_err = logit_error_bound(step.branch, z, err)
            z = step.stage.merge(z, out)
            err = (err + out_err) * (0.5**0.5 * (1 + 1e-15)) + 16 * UNIT_ROUNDOFF * z.abs().max(dim=1).values
        else:
            a = step.activation(z)
            err = step.slope * err
            if not step.exact:
                err = err + 16 * UNIT_ROUNDOFF * (a.norm(dim=1) + step.slope * z.norm(dim=1))
            z = a
    return z, err

