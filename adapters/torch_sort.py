"""fx subgraphs that compute a sorting activation (GroupSort, FullSort, MaxMin), found by their values.

The torch counterpart of :mod:`.onnx_sort`: ``x.reshape(..., 2).max(-1)`` with ``.min(-1)`` and
``torch.cat``, ``torch.split`` with ``torch.maximum``/``torch.minimum``, ``torch.sort``... From a
dynamic tensor used by several nodes, :func:`find` grows the region of such calls until it has
one exit, runs it sample by sample and asks :func:`.groupsort.identify` what it computes.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .graph import Op
from .groupsort import identify

FUNCTIONS = {torch.split, torch.chunk, torch.maximum, torch.minimum, torch.max, torch.min, torch.cat, torch.concat,
             torch.stack, torch.sort, torch.topk, torch.neg, torch.relu, F.relu, torch.reshape, torch.flatten,
             torch.transpose, torch.permute, torch.squeeze, torch.unsqueeze, torch.unbind, operator.getitem,
             operator.neg, operator.floordiv, getattr}
METHODS = {"split", "chunk", "max", "min", "reshape", "view", "flatten", "transpose", "permute", "squeeze", "unsqueeze",
           "sort", "topk", "size", "neg", "relu", "contiguous", "clone", "unbind", "maximum", "minimum"}
STARTS = {torch.split, torch.chunk, torch.maximum, torch.minimum, torch.max, torch.min, torch.sort, torch.topk,
          "split", "chunk", "max", "min", "sort", "topk", "maximum", "minimum"}
"""Calls at which a sorting region is looked for even when their input has one user."""
_MAX_REGION = 64


@dataclass(frozen=True)
class Match:
    """Nodes computing one sorting activation from ``source`` to ``exit``."""

    region: list[torch.fx.Node]
    exit: torch.fx.Node
    label: str
    ops: list[Op]


def starts(node: torch.fx.Node) -> bool:
    """True for a call at which a region is looked for."""
    return _hashable(node.target) and node.target in STARTS


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _allowed(node: torch.fx.Node) -> bool:
    if node.op == "call_function":
        return _hashable(node.target) and node.target in FUNCTIONS
    return node.op == "call_method" and node.target in METHODS


def find(graph: torch.fx.Graph, constants: dict[str, Any], source: torch.fx.Node, start: torch.fx.Node,
         shape: tuple[int, ...]) -> Match | None:
    """The sorting activation computed by the calls reading ``source`` (from ``start`` on), or None.

    ``constants`` maps node names to the values of the nodes that do not depend on the input.
    """
    nodes = list(graph.nodes)
    region: list[torch.fx.Node] = []
    inside = {source}
    for node in nodes[nodes.index(start):]:
        if not any(n in inside for n in node.all_input_nodes):
            continue
        if not _allowed(node) or len(region) >= _MAX_REGION:
            return None
        region.append(node)
        inside.add(node)
        members = set(region)
        exits = [n for n in region if any(u not in members for u in n.users)]
        readers = {u for u in source.users if u.name not in constants}  # shape queries were evaluated already
        if readers <= members and exits == [node]:
            match = _identify(region, constants, source, node, shape)
            if match is not None:
                return match
    return None


def _identify(region: list[torch.fx.Node], constants: dict[str, Any], source: torch.fx.Node,
              exit_node: torch.fx.Node, shape: tuple[int, ...]) -> Match | None:
    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([_evaluate(region, constants, source, exit_node, sample) for sample in x])

    try:
        found = identify(run, shape)
    except Exception:  # noqa: BLE001 - a region that fails on a sample is simply not a match
        return None
    if found is None:
        return None
    return Match(region, exit_node, found[0], found[1])


def _evaluate(region: list[torch.fx.Node], constants: dict[str, Any], source: torch.fx.Node,
              exit_node: torch.fx.Node, sample: torch.Tensor) -> Any:
    """The region's calls on one sample (``source`` set to it, every other input a constant)."""
    values: dict[torch.fx.Node, Any] = {source: sample}

    def value(n: torch.fx.Node) -> Any:
        if n in values:
            return values[n]
        if n.name not in constants:
            raise ValueError(f"{n.name} is neither in the region nor a constant")
        return constants[n.name]

    for node in region:
        args = torch.fx.node.map_arg(node.args, value)
        kwargs = torch.fx.node.map_arg(node.kwargs, value)
        if node.op == "call_method":
            values[node] = getattr(args[0], str(node.target))(*args[1:], **kwargs)
        else:
            values[node] = node.target(*args, **kwargs)  # type: ignore[operator]
    return values[exit_node]
