"""The model a subcommand loads: a file (``MODEL``), or a class with state_dict weights.

``--model module:Class --weights file.pth [--model-args JSON] [--model-path DIR]`` names the model
the way alpha-beta-CROWN and auto_LiRPA scripts do; :func:`model_source` turns either form into what
:func:`lipcert.load` takes.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import InvalidArgumentError


def _json_args(text: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not JSON: {text!r} (e.g. '{{\"in_ch\": 3}}' or '[3, 10]')") from None
    if not isinstance(value, dict | list):
        raise argparse.ArgumentTypeError(f"expected a JSON object (keyword arguments) or list (positional), "
                                         f"got {text!r}")
    return value


def add_class_arguments(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--weights``, ``--model-args``, ``--model-path`` (the positional MODEL becomes optional)."""
    g = p.add_argument_group("model class with state_dict weights (instead of MODEL)")
    g.add_argument("--model", dest="model_class", default=None, metavar="MODULE:CLASS",
                   help="model class (or function returning a module): 'package.module:Class' or 'file.py:Class'")
    g.add_argument("--weights", default=None, help="state_dict file (.pth/.pt): plain, or a checkpoint dict "
                                                   "holding it under state_dict/model; 'module.' prefixes removed")
    g.add_argument("--model-args", type=_json_args, default=None, metavar="JSON",
                   help="arguments of the class: a JSON object (keywords) or list (positional)")
    g.add_argument("--model-path", action="append", default=None, metavar="DIR",
                   help="folder holding the class's module or file.py (repeatable)")


def model_source(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """What to pass to :func:`lipcert.load`: the source and its class keywords (weights, model_args, model_path).

    Sets ``args.model`` to a label of the class and weights when only ``--model`` was given.
    """
    cls = getattr(args, "model_class", None)
    if cls is None:
        for flag in ("weights", "model_args", "model_path"):
            if getattr(args, flag, None) is not None:
                raise InvalidArgumentError(f"--{flag.replace('_', '-')} needs --model MODULE:CLASS")
        if args.model is None:
            raise InvalidArgumentError("give a model file (MODEL) or a model class with --model MODULE:CLASS "
                                       "--weights FILE")
        return args.model, {}
    if args.model is not None and args.model != _label(args):
        raise InvalidArgumentError(f"give either a model file ({args.model}) or --model {cls}, not both")
    if args.weights is None:
        raise InvalidArgumentError(f"--model {cls} needs --weights (the state_dict file)")
    args.model = _label(args)
    return cls, {"weights": args.weights, "model_args": args.model_args, "model_path": args.model_path}


def _label(args: argparse.Namespace) -> str:
    return f"{args.model_class} + {args.weights}"


def model_object(args: argparse.Namespace) -> Any:
    """The model as a path or, for ``--model``, the built torch module (for tools other than lipcert.load)."""
    source, keywords = model_source(args)
    if not keywords:
        return source
    from ..adapters.checkpoint import build_module

    return build_module(source, **keywords)
