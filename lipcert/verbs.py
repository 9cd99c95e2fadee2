"""``lipcert.lipschitz`` and ``lipcert.lower_bound``: the bound verbs on any model source.

The bounds in :mod:`lipcert.bounds` take a loaded :class:`~lipcert.Network` (``bounds/`` imports
nothing from loading or the adapters); these verbs load a path or a torch module first with
:func:`lipcert.load`, as every other verb does.  A torch module needs ``input_shape=`` here:
these verbs have no inputs to read it from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .bounds import methods
from .bounds import lower as lower_bounds
from .bounds.lower import LowerBound
from .bounds.result import LipschitzBound
from .loading import as_model


def lipschitz(
    model: Any,
    method: str = "combined",
    *,
    options: Mapping[str, Any] | None = None,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device | None = None,
    input_shape: Sequence[int] | None = None,
    max_bytes: float | None = None,
    path: str = "auto",
) -> LipschitzBound:
    """Upper bound on the L2 Lipschitz constant of a model.

    Parameters
    ----------
    model : Network, GraphNetwork, path or torch.nn.Module
        Loaded with :func:`lipcert.load` (a torch module needs ``input_shape``); a model with residual
        blocks is a GraphNetwork, bounded stage by stage (docs/decisions.md 29).
    method, options, dtype, device, max_bytes, path
        See :func:`lipcert.bounds.methods.lipschitz`: a method name of :data:`lipcert.bounds.METHODS`,
        its options mapping, the precision and device of the closed-form recursions, the limit on
        its estimated working memory, and for convolutions kept as operators whether to run with dense
        matrices ("dense"), without them ("matrix-free") or by the memory estimate ("auto").
    input_shape : sequence of int, optional
        Shape of one input without the batch axis, for a torch module.

    Returns
    -------
    LipschitzBound
        ``value`` >= Lip_2(f) of the loaded Network (raw inputs when it carries its normalization).
    """
    net = as_model(model, input_shape=input_shape, verb="lipschitz")
    return methods.lipschitz(net, method, options=options, dtype=dtype, device=device, max_bytes=max_bytes,
                             path=path)


def lower_bound(model: Any, *, restarts: int = 8, samples: int = 256, seed: int = 0,
                input_shape: Sequence[int] | None = None, seconds: float | None = None,
                max_bytes: float | None = None) -> LowerBound:
    """Lower bound on the L2 Lipschitz constant of a model (see :func:`lipcert.bounds.lower.lower_bound`).

    ``model`` is loaded with :func:`lipcert.load` (a torch module needs ``input_shape``);
    ``restarts``, ``samples`` and ``seed`` are those of the pattern and sampled-Jacobian bounds,
    ``seconds`` their time budget and ``max_bytes`` the limit on their estimated working memory.
    """
    net = as_model(model, input_shape=input_shape, verb="lower_bound")
    return lower_bounds.lower_bound(net, restarts=restarts, samples=samples, seed=seed, seconds=seconds,
                                    max_bytes=max_bytes)
