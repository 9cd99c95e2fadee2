"""What an ONNX operator handler sees of a node, and small helpers shared by the handlers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch

from .graph import DYNAMIC, AffineOp, NotCovered

@dataclass(frozen=True)
class OnnxNode:
    """What a handler sees of a node."""

    proto: onnx.NodeProto
    opset: int
    inputs: tuple[Any, ...]  # np.ndarray constant, None (missing optional input) or DYNAMIC
    dyn: int  # position of the dynamic input
    shape: tuple[int, ...]  # per-sample shape of the dynamic input

    def attr(self, name: str, default: Any = None) -> Any:
        for a in self.proto.attribute:
            if a.name == name:
                value = onnx.helper.get_attribute_value(a)
                if isinstance(value, bytes):
                    return value.decode()
                if isinstance(value, onnx.TensorProto):
                    return onnx.numpy_helper.to_array(value)
                return value
        return default

    def const(self, i: int, what: str) -> np.ndarray | None:
        """Constant input ``i`` (None if absent); NotCovered if it is computed from the model input."""
        if i >= len(self.inputs) or self.inputs[i] is None:
            return None
        if self.inputs[i] is DYNAMIC:
            raise NotCovered(f"its {what} (input {i}) is computed from the model input, so the node is not affine "
                             "in the input")
        return np.asarray(self.inputs[i])

    def ints(self, attr_name: str | None, input_index: int | None, what: str) -> list[int] | None:
        """An integer list given as attribute (old opsets) or as constant input (new opsets)."""
        value = None if attr_name is None else self.attr(attr_name)
        if value is None and input_index is not None:
            arr = self.const(input_index, what)
            value = None if arr is None else arr.reshape(-1).tolist()
        return None if value is None else [int(v) for v in value]


def t64(arr: np.ndarray | float) -> torch.Tensor:
    """A float64 torch copy of a constant."""
    return torch.as_tensor(np.array(arr, dtype=np.float64))


def required(node: OnnxNode, i: int) -> np.ndarray:
    value = node.const(i, "operand")
    if value is None:
        raise NotCovered(f"input {i} is missing")
    return value


def linear(fn: Callable[[torch.Tensor], torch.Tensor], detail: str = "") -> AffineOp:
    return AffineOp(lambda x, _bias: fn(x), 0, detail)


def torch_pad(begins: Sequence[int], ends: Sequence[int]) -> list[int]:
    """ONNX per-axis (begin, end) pads in F.pad order (last axis first)."""
    out: list[int] = []
    for b, e in zip(reversed(begins), reversed(ends)):
        out += [int(b), int(e)]
    return out


def users(nodes: Sequence[onnx.NodeProto], name: str) -> str:
    """The nodes that read the value ``name``, for messages: "used by Gemm node '/1/Gemm', ..."."""
    found = [f"{n.op_type} node {n.name!r}" for n in nodes if name in n.input]
    return "used by " + ", ".join(found) if found else "used by no node"
