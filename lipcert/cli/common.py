"""Pieces shared by subcommands: model arguments and number parsing."""

from __future__ import annotations

import argparse
from typing import Any

from ..graph import GraphNetwork
from ..network import Network
from .model_source import add_class_arguments, model_source


def floats(text: str) -> list[float]:
    """'0.5,1,1.58' or '36/255,72/255' to a list of floats."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        num, _, den = part.partition("/")
        try:
            out.append(float(num) / (float(den) if den else 1.0))
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {part!r}") from None
        except ZeroDivisionError:
            raise argparse.ArgumentTypeError(f"division by zero in {part!r}") from None
    return out


def add_model_arguments(p: argparse.ArgumentParser, *, many: bool = False) -> None:
    """MODEL (several with ``many``), normalization, input shape, memory limit and the class options."""
    p.add_argument("model", nargs="*" if many else "?", default=None,
                   help="model file: .onnx, .pt/.pth (whole pickled module) or .npz of weights (or use --model)"
                        + ("; several files certify each into its own run folder under --out, with a comparison"
                           if many else ""))
    p.add_argument("--mean", type=floats, default=None, help="input normalization mean per channel, e.g. 0.4914,0.4822,0.4465")
    p.add_argument("--std", type=floats, default=None, help="input normalization std per channel")
    p.add_argument("--input-shape", type=lambda s: tuple(int(v) for v in s.split(",")), default=None,
                   help="input shape without batch, e.g. 1,28,28 (needed for some .pt files)")
    p.add_argument("--max-dense-gb", type=float, default=None,
                   help="limit on the dense weight matrices of a converted model (default 4) and on the working "
                        "memory of each bound (default 80%% of the memory available), in GB; a bound on a model with "
                        "convolutions runs matrix-free where its dense form would exceed it")
    p.add_argument("--dense-convs", action="store_true",
                   help="materialize convolutions as dense matrices at load (default: kept as operators)")
    add_class_arguments(p)


def load_model(args: argparse.Namespace) -> Network | GraphNetwork:
    from ..loading import load

    limit = getattr(args, "max_dense_gb", None)
    options: dict[str, Any] = {} if limit is None else {"max_dense_bytes": int(limit * 1e9)}
    if getattr(args, "dense_convs", False):
        options["dense"] = True
    source, keywords = model_source(args)
    return load(source, input_shape=args.input_shape, mean=args.mean, std=args.std, **keywords, **options)
