"""``--config exp.yaml``: fill a run's arguments from an alpha-beta-CROWN config; lipcert's own flags win.

The config is read by :func:`lipcert.adapters.config.read_config`; every argument the user gave on the
command line is kept, every one left unset (None) is taken from the config.
"""

from __future__ import annotations

import argparse
import sys

from ..adapters.config import VerifierConfig, read_config


def add_config_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, metavar="YAML",
                   help="alpha-beta-CROWN config: model (Customized(...)/onnx_path, path), data set, mean/std, norm, "
                        "eps, vnnlib_path/csv_name; flags given here override it")


def apply_config(args: argparse.Namespace) -> VerifierConfig | None:
    """Fill the unset arguments of ``args`` from ``args.config`` (if given); print what the config set."""
    if getattr(args, "config", None) is None:
        return None
    cfg = read_config(args.config)
    model_given = getattr(args, "model", None) is not None or getattr(args, "model_class", None) is not None
    if not model_given and cfg.model is not None:
        if cfg.weights is not None:  # a model class with its state_dict
            args.model_class, args.model_path = cfg.model, getattr(args, "model_path", None) or cfg.model_path
            args.weights = getattr(args, "weights", None) or cfg.weights
            args.model_args = getattr(args, "model_args", None) or cfg.model_args
        else:
            args.model = cfg.model
    values = {"input_shape": cfg.input_shape, "dataset": cfg.dataset, "mean": cfg.mean, "std": cfg.std, "n": cfg.n,
              "norm": cfg.norm, "eps": None if cfg.eps is None else [cfg.eps]}
    for name, value in values.items():
        if hasattr(args, name) and getattr(args, name) is None and value is not None:
            setattr(args, name, value)
    print(f"note: {cfg.describe()}", file=sys.stderr)
    return cfg


__all__ = ["add_config_argument", "apply_config"]
