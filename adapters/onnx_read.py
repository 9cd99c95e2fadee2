"""Reading an ONNX file: parsing and validation, its operator-set version and its one input's shape."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from lipcert.errors import ModelLoadError


def read_model(source: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    """Parse and validate an ONNX file; ModelLoadError for a missing, corrupt or invalid file."""
    if isinstance(source, onnx.ModelProto):
        model = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ModelLoadError(f"no such ONNX file: {path}")
        try:
            model = onnx.load(str(path))
        except DecodeError as exc:
            raise ModelLoadError(f"{path} is not a valid ONNX file: protobuf parsing failed ({exc}); the file is "
                                 "probably truncated or corrupt") from exc
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"{path} could not be read as ONNX: {exc}") from exc
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{model_name(source)} is not a valid ONNX model: {first}") from exc
    if len(model.graph.node) == 0:
        raise ModelLoadError(f"{model_name(source)}: the ONNX graph has no nodes")
    return model


def model_name(source: Any) -> str:
    return "ONNX model" if isinstance(source, onnx.ModelProto) else str(source)


def opset_of(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ModelLoadError("the ONNX model imports no version of the default operator set")


def input_spec(model: onnx.ModelProto, source: str, input_shape: Sequence[int] | None
            ) -> tuple[str, tuple[int, ...], tuple[int, ...], int]:
    """Input name, per-sample shape, Network input shape and element type."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelLoadError(f"{source}: the model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                             "lipcert needs exactly one")
    inp = inputs[0]
    ttype = inp.type.tensor_type
    dims: list[int | None] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                              for d in ttype.shape.dim]
    batch = len(dims) >= 2 and dims[0] in (None, 1)
    rest = dims[1:] if batch else dims
    if input_shape is not None:
        given = tuple(int(s) for s in input_shape)
        if len(given) == len(dims) and batch and given[0] == 1 and len(given) - 1 != len(rest):
            given = given[1:]
        if len(given) != len(rest) or any(d is not None and d != g for d, g in zip(rest, given)):
            raise ModelLoadError(f"{source}: input_shape {given} does not fit the model input {inp.name!r} of shape "
                                 f"{['?' if d is None else d for d in dims]} (give the shape without batch axis)")
        rest = list(given)
    if any(d is None for d in rest):
        raise ModelLoadError(f"{source}: the input {inp.name!r} has symbolic dimensions "
                             f"{['?' if d is None else d for d in dims]}; pass input_shape=(...) without the batch "
                             "axis")
    shape = tuple(int(d) for d in rest)  # type: ignore[arg-type]
    return inp.name, ((1,) + shape if batch else shape), shape, int(ttype.elem_type)


def graph_input(model: onnx.ModelProto, name: str) -> onnx.ValueInfoProto:
    return model.graph.input[[i.name for i in model.graph.input].index(name)]
