"""Old ONNX operator sets, upgraded before the graph is interpreted.

Models exported before opset 9 (ACAS Xu, early VNN-COMP benchmarks) are converted to
:data:`TARGET_OPSET` with ``onnx.version_converter`` (the ONNX project's own converter, which
rewrites operators whose semantics changed between opsets); the result is validated again.  The
conversion check of the loaded Network still runs onnxruntime on the original model, so a wrong
upgrade would be caught there.
"""

from __future__ import annotations

import onnx
import onnx.version_converter

from lipcert.errors import ModelLoadError

TARGET_OPSET = 13
"""Opset that models older than the oldest interpreted one are converted to."""


def upgrade(model: onnx.ModelProto, opset: int, source: str) -> tuple[onnx.ModelProto, str]:
    """``model`` converted from ``opset`` to :data:`TARGET_OPSET`, with the note that says so."""
    try:
        converted = onnx.version_converter.convert_version(model, TARGET_OPSET)
        onnx.checker.check_model(converted)
    except Exception as exc:  # noqa: BLE001 - the converter raises RuntimeError, ValidationError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{source}: opset {opset} could not be converted to opset {TARGET_OPSET} with "
                             f"onnx.version_converter ({first}); re-export the model with a newer opset") from exc
    note = (f"opset {opset} converted to opset {TARGET_OPSET} with onnx.version_converter; the conversion check "
            "runs onnxruntime on the original model")
    return converted, note


__all__ = ["TARGET_OPSET", "upgrade"]
