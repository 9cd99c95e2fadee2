"""``lipcert inspect MODEL``: how a model is read, layer by layer, before bounding it.

Prints every converted layer (shapes, activation slopes, parameter counts), the dense
matrices the bounds will use and their sizes, and, for an unsupported model, every
offending node.  Exit status 0 for a supported model, 2 otherwise.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import LipcertError
from ..graph import AnyNetwork, GraphNetwork
from .common import add_model_arguments, load_model
from .model_source import model_source


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="show how a model is converted: layers, shapes, slopes, dense sizes",
                       description="Show the layers lipcert reads from a model, the dense matrices it builds, and "
                                   "every unsupported operator.")
    add_model_arguments(p)
    p.add_argument("--no-build", action="store_true",
                   help="only analyze; do not build the dense network (no conversion check)")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of tables")
    p.set_defaults(run=run)


def _analyze(args: argparse.Namespace) -> Any:
    """The adapters' Conversion for an .onnx or .pt/.pth model, None for .npz."""
    from ..adapters.files import read

    source, keywords = model_source(args)
    if keywords:
        from ..adapters.checkpoint import build_module
        from ..adapters.torch import analyze_module

        return analyze_module(build_module(source, **keywords), input_shape=args.input_shape, source=args.model)
    return read(source, input_shape=args.input_shape).conversion


def _shape(conv: Any, shape: tuple[int, ...]) -> str:
    return "x".join(map(str, conv.display_shape(shape))) or "scalar"


def _slopes(act: Any) -> str:
    return f"{act.name} [{act.alpha:g}, {act.beta:g}]"


def _report(args: argparse.Namespace, conv: Any, net: AnyNetwork | None, build_error: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"model": str(args.model), "normalized": args.mean is not None or args.std is not None}
    if conv is not None:
        from ..adapters.graph import dense_plan
        from ..adapters.residual import has_merges

        out.update({
            "format": conv.format,
            "input": {"name": conv.input_name, "shape": list(conv.input_shape)},
            "layers": [{"name": layer.name, "op_type": layer.op_type, "kind": layer.kind,
                        "in_shape": list(conv.display_shape(layer.in_shape)),
                        "out_shape": list(conv.display_shape(layer.out_shape)), "params": layer.params,
                        "activation": None if layer.activation is None else layer.activation.name,
                        "slopes": None if layer.activation is None else [layer.activation.alpha,
                                                                          layer.activation.beta],
                        "detail": layer.detail} for layer in conv.layers],
            "issues": [{"name": i.name, "op_type": i.op_type, "why": i.why} for i in conv.issues],
            "notes": list(conv.notes),
        })
        if not conv.issues and not has_merges(conv):
            blocks = dense_plan(conv)
            out["dense"] = [{"layers": b.label, "rows": b.rows, "cols": b.cols, "bytes": b.nbytes,
                             "activation": (None if b.activation is None or b.activation.activation is None
                                            else b.activation.activation.name)}
                            for b in blocks]
            out["dense_bytes_total"] = sum(b.nbytes for b in blocks)
    if net is not None:
        out["network"] = {"widths": list(net.widths), "activations": list(net.activation_names),
                          "parameters": net.num_parameters, "input_shape": list(net.input_shape),
                          "input_range": None if net.input_range is None else list(net.input_range),
                          "input_space": net.info.get("input_space"),
                          "conversion_error": net.info.get("conversion_error")}
        if isinstance(net, GraphNetwork):
            out["network"]["stages"] = repr(net)
    if build_error is not None:
        out["build_error"] = build_error
    return out


def _print(report: dict[str, Any], conv: Any) -> None:
    print(f"model: {report['model']}" + (f" ({report['format']})" if "format" in report else ""))
    if conv is not None:
        print(f"input: {conv.input_name!r}, shape {'x'.join(map(str, conv.input_shape))} (without batch axis)")
        if report.get("normalized"):
            print("(x - mean) / std is prepended to layer 1 when the network is built")
        header = f"{'#':>3}  {'name':<28}{'op':<20}{'shape in -> out':<30}{'params':>10}  activation / detail"
        print(header)
        print("-" * len(header))
        for k, layer in enumerate(conv.layers, start=1):
            shapes = f"{_shape(conv, layer.in_shape)} -> {_shape(conv, layer.out_shape)}"
            what = _slopes(layer.activation) if layer.activation is not None else layer.detail
            print(f"{k:>3}  {layer.name[:27]:<28}{layer.op_type[:19]:<20}{shapes:<30}{layer.params:>10}  {what}")
        for note in conv.notes:
            print(f"note: {note}")
        if conv.issues:
            print(f"\n{len(conv.issues)} unsupported operator{'s' if len(conv.issues) > 1 else ''} (lipcert bounds "
                  "chains of affine maps and elementwise slope-restricted activations):")
            for issue in conv.issues:
                print(f"  - {issue}")
            return
        if "dense" not in report:
            print("\nnetwork graph: the network is built as stages (chains, residual blocks, L2-norm poolings or "
                  "residuals)")
        for k, b in enumerate(report.get("dense", []), start=1):
            if k == 1:
                print("\ndense matrices (consecutive affine layers merged):")
            act = f"then {b['activation']}" if b["activation"] else "(output)"
            print(f"  W{k}: {b['rows']} x {b['cols']}  {b['bytes'] / 1e6:10.1f} MB  from {b['layers']}  {act}")
        if "dense" in report:
            print(f"  total {report['dense_bytes_total'] / 1e6:.1f} MB")
    net = report.get("network")
    if net is not None:
        print(f"\nnetwork: widths {net['widths']}, {net['parameters']} parameters")
        if "stages" in net:
            print(f"stages: {net['stages']}")
        print(f"input space: {net['input_space']}")
        err = net["conversion_error"]
        print("conversion check: " + ("not run" if err is None else f"max |difference| {err:.3g} from the original"))
    if "build_error" in report:
        print(f"\nnot built: {report['build_error']}")


def run(args: argparse.Namespace) -> int:
    conv = _analyze(args)
    net: AnyNetwork | None = None
    build_error: str | None = None
    if (conv is None or not conv.issues) and not args.no_build:
        try:
            net = load_model(args)
        except LipcertError as exc:
            build_error = str(exc)
    report = _report(args, conv, net, build_error)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report, conv)
    return 2 if (conv is not None and conv.issues) or build_error is not None else 0
