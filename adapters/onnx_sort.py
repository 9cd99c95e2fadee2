"""ONNX subgraphs that compute a sorting activation (GroupSort, FullSort, MaxMin), found by their values.

Exports write GroupSort as Reshape + ReduceMax/ReduceMin + Concat, as Split + Max/Min + Concat or
as TopK.  Starting at a dynamic tensor used by several nodes (other users of it, such as a skip
connection, stay outside), :func:`find` grows the region of
such shape and order operators until it has one exit, runs it with the ONNX reference
evaluator on random float32-representable samples (these operators only copy and compare, so
the values are exact) and asks :func:`.groupsort.identify` which sorting activation it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import torch

from .graph import Op
from .groupsort import identify

REGION_OPS = {"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Split", "Slice", "Concat", "ReduceMax",
              "ReduceMin", "Max", "Min", "TopK", "Identity", "Neg", "Relu"}
"""Operators a sorting subgraph may use (all of them copy, negate, reorder or compare entries)."""
STARTS = {"Split", "TopK", "ReduceMax", "ReduceMin", "Max", "Min"}
"""Operators at which a sorting region is looked for even when their input has one user."""
_SHAPE_ONLY = {"Shape", "Size"}
_MAX_REGION = 64


@dataclass(frozen=True)
class Match:
    """A region of nodes computing one sorting activation from ``source`` to ``exit``."""

    region: list[int]
    exit: str
    label: str
    ops: list[Op]
    values: dict[str, torch.Tensor]
    """Every region output on the probe sample."""


def find(nodes: list[onnx.NodeProto], env: dict[str, object], users: Callable[[str], list[int]], outputs: list[str],
         source: str, start: int, probe: torch.Tensor, opsets: dict[str, int], elem_type: int) -> Match | None:
    """The sorting activation computed by the region of nodes reading ``source`` (from node ``start`` on), or None."""
    region: list[int] = []
    inside = {source}
    for j in range(start, min(len(nodes), start + 4 * _MAX_REGION)):
        node = nodes[j]
        if not any(n in inside for n in node.input) or node.op_type in _SHAPE_ONLY:
            continue
        if j != start and node.op_type not in REGION_OPS and inside.isdisjoint(set(node.input) - {source}):
            continue  # another user of the source (a skip connection), not part of the region
        if node.op_type not in REGION_OPS or len(region) >= _MAX_REGION:
            return None
        if any(n and n not in inside and not isinstance(env.get(n), np.ndarray) for n in node.input):
            return None
        region.append(j)
        inside.update(o for o in node.output if o)
        exits = _exits(nodes, region, users, outputs)
        if len(exits) == 1 and exits[0] == node.output[0]:
            match = _identify(nodes, region, env, source, exits[0], probe, opsets, elem_type)
            if match is not None:
                return match
    return None


def _exits(nodes: list[onnx.NodeProto], region: list[int], users: Callable[[str], list[int]],
           outputs: list[str]) -> list[str]:
    members = set(region)
    return [name for j in region for name in nodes[j].output
            if name and (any(u not in members for u in users(name)) or name in outputs)]


def _identify(nodes: list[onnx.NodeProto], region: list[int], env: dict[str, object], source: str, exit_name: str,
              probe: torch.Tensor, opsets: dict[str, int], elem_type: int) -> Match | None:
    from onnx.reference import ReferenceEvaluator

    members = [nodes[j] for j in region]
    consts = {n for node in members for n in node.input if n and n != source and isinstance(env.get(n), np.ndarray)}
    names = [o for node in members for o in node.output if o]
    graph = onnx.helper.make_graph(
        members, "sorting region", [onnx.helper.make_tensor_value_info(source, elem_type, None)],
        [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in names],
        [onnx.numpy_helper.from_array(np.asarray(env[n]), n) for n in consts])
    evaluator = ReferenceEvaluator(graph, opsets=opsets)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
    exit_index = names.index(exit_name)

    def run(x: torch.Tensor) -> torch.Tensor:
        outs = [list(evaluator.run(None, {source: s.numpy().astype(dtype)}))[exit_index] for s in x]
        return torch.as_tensor(np.stack(outs).astype(np.float64))

    try:
        found = identify(run, tuple(probe.shape))
        if found is None:
            return None
        values = evaluator.run(None, {source: probe.numpy().astype(dtype)})
    except Exception:  # noqa: BLE001 - a region the evaluator cannot run is simply not a match
        return None
    label, ops = found
    return Match(region, exit_name, label, ops,
                 {n: torch.as_tensor(np.asarray(v, dtype=np.float64)) for n, v in zip(names, values)})
