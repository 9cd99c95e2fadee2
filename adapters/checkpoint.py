"""State-dict checkpoints with their model class, as verification scripts load them.

auto_LiRPA and alpha-beta-CROWN keep weights as a ``state_dict`` (or a checkpoint dict holding one)
and name the architecture in code or in a config (``Customized("file.py", "Class", **kwargs)``).
:func:`build_module` does the same: it imports ``"module:Class"`` or ``"path/file.py:Class"`` (any
callable returning a ``torch.nn.Module``), calls it with the model arguments, reads the weights
(:func:`read_state_dict`) and loads them strictly; a mismatch is a :class:`CheckpointMismatchError`
that names every missing, unexpected and misshapen key.
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lipcert.errors import CheckpointMismatchError, ModelLoadError

from .sniff import torch_load

ModelArgs = Mapping[str, Any] | Sequence[Any] | None
"""Arguments of the model class: keyword arguments (a mapping) or positional ones (a sequence)."""

NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "network")
"""Keys of a checkpoint dict under which the state_dict sits (tried in this order)."""

_SPEC = re.compile(r"^(?P<where>[^:]+):(?P<name>[A-Za-z_][A-Za-z0-9_.]*)$")


def is_class_spec(source: Any) -> bool:
    """Whether ``source`` names a model class (``"module:Class"``, ``"file.py:Class"``) rather than a file."""
    if not isinstance(source, str) or Path(source).exists():
        return False
    match = _SPEC.match(source)
    if match is None:
        return False
    where = match["where"]
    return where.endswith(".py") or all(part.isidentifier() for part in where.split("."))


def import_class(spec: str, model_path: str | Path | Sequence[str | Path] | None = None) -> Any:
    """The callable named by ``"module:Class"`` or ``"file.py:Class"``.

    ``model_path`` (a folder or several) is searched first, as alpha-beta-CROWN's ``general.root_path``:
    a relative ``file.py`` is looked up in it, and a module name is imported with it on ``sys.path``.
    """
    match = _SPEC.match(spec)
    if match is None:
        raise ModelLoadError(f"model class {spec!r} is not of the form 'module:Class' or 'file.py:Class'")
    where, name = match["where"], match["name"]
    folders = [Path(p) for p in ([] if model_path is None else
                                 [model_path] if isinstance(model_path, str | Path) else model_path)]
    for folder in folders:
        if not folder.is_dir():
            raise ModelLoadError(f"model path {folder} is not a folder")
    if where.endswith(".py"):
        candidates = [f / where for f in folders] + [Path(where)]
        file = next((c for c in candidates if c.is_file()), None)
        if file is None:
            raise ModelLoadError(f"model file {where!r} not found (looked in {', '.join(map(str, candidates))})")
        module_spec = importlib.util.spec_from_file_location(f"lipcert_user_model_{file.stem}", file)
        if module_spec is None or module_spec.loader is None:
            raise ModelLoadError(f"cannot import {file} as a Python module")
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - the user's code can raise anything
            raise ModelLoadError(f"importing {file} failed ({type(exc).__name__}: {exc})") from exc
    else:
        added = [str(f.resolve()) for f in folders if str(f.resolve()) not in sys.path]
        sys.path[:0] = added
        try:
            module = importlib.import_module(where)
        except Exception as exc:  # noqa: BLE001 - ImportError or an error inside the user's module
            raise ModelLoadError(f"cannot import module {where!r} ({type(exc).__name__}: {exc}); give the folder "
                                 "that holds it with model_path= (CLI: --model-path)") from exc
        finally:
            for entry in added:
                sys.path.remove(entry)
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            public = sorted(k for k, v in vars(module).items() if isinstance(v, type) and issubclass(v, nn.Module))
            raise ModelLoadError(f"{where} has no {name!r}; its torch modules: {', '.join(public) or 'none'}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelLoadError(f"{spec} is a {type(obj).__name__}, not a class or function returning a module")
    return obj


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict in a weights file: plain, or under a checkpoint key (:data:`NESTED_KEYS`, also a
    one-element list as in ERAN checkpoints), with DataParallel's ``module.`` prefixes removed.

    Read with ``torch.load(weights_only=True)``: no code in the file runs.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"no such weights file: {path}")
    try:
        obj = torch_load(path)
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(f"{path} is not a weights file that loads without running code ({exc}); a whole "
                             "pickled module loads with lipcert.load(path) instead") from exc
    state = _unwrap(obj, path)
    return {k.removeprefix("module."): v for k, v in state.items()}


def _unwrap(obj: Any, path: Path) -> Mapping[str, Any]:
    for _ in range(3):  # {"state_dict": [{...}]}, {"model": {"state_dict": ...}}
        if isinstance(obj, list | tuple) and len(obj) == 1:
            obj = obj[0]
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        key = next((k for k in NESTED_KEYS if k in obj), None)
        if key is None:
            break
        obj = obj[key]
    keys = list(obj)[:8] if isinstance(obj, Mapping) else []
    raise ModelLoadError(f"{path} holds no state_dict: expected a dict of tensors, or one under "
                         f"{', '.join(NESTED_KEYS)}; found {type(obj).__name__}"
                         + (f" with keys {keys}" if keys else ""))


def load_weights(module: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Load ``state`` into ``module`` strictly; any missing, unexpected or misshapen key is an error."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} (model {tuple(own[k].shape)})"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{label}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)) if keys]
        raise CheckpointMismatchError(f"the weights in {source} do not fit {type(module).__name__} ("
                                      + "; ".join(parts) + "); check the model class and its arguments")
    module.load_state_dict(dict(state), strict=True)


def build_module(model: Any, *, weights: str | Path | None = None, model_args: ModelArgs = None,
                 model_path: str | Path | Sequence[str | Path] | None = None) -> nn.Module:
    """The eval-mode module of a class spec (or a class, or a module) with ``weights`` loaded.

    ``model`` is ``"module:Class"``, ``"file.py:Class"``, a callable returning a module, or a module
    (then copied before the weights are loaded into it); ``model_args`` are its keyword (mapping) or
    positional (sequence) arguments.
    """
    import copy

    if isinstance(model, nn.Module):
        if model_args:
            raise ModelLoadError("model_args are for a model class; got a module that is already built")
        module = copy.deepcopy(model) if weights is not None else model
        name = type(model).__name__
    else:
        make = import_class(model, model_path) if isinstance(model, str) else model
        if not callable(make):
            raise ModelLoadError(f"cannot build a model from a {type(model).__name__}")
        name = str(model) if isinstance(model, str) else getattr(make, "__name__", repr(make))
        try:
            module = make(**model_args) if isinstance(model_args, Mapping) else make(*(model_args or ()))
        except Exception as exc:  # noqa: BLE001 - the user's constructor can raise anything
            raise ModelLoadError(f"{name}({_args_text(model_args)}) failed ({type(exc).__name__}: {exc}); "
                                 "check the model arguments (model_args=, CLI --model-args)") from exc
        if not isinstance(module, nn.Module):
            raise ModelLoadError(f"{name}({_args_text(model_args)}) returned a {type(module).__name__}, "
                                 "not a torch.nn.Module")
    if weights is not None:
        load_weights(module, read_state_dict(weights), source=str(weights))
    elif not isinstance(model, nn.Module):
        raise ModelLoadError(f"{name} is a model class without weights: pass weights= (CLI --weights) with the "
                             "state_dict file")
    return module.eval()


def _args_text(model_args: ModelArgs) -> str:
    if isinstance(model_args, Mapping):
        return ", ".join(f"{k}={v!r}" for k, v in model_args.items())
    return ", ".join(repr(v) for v in (model_args or ()))


__all__ = ["NESTED_KEYS", "ModelArgs", "build_module", "import_class", "is_class_spec", "load_weights",
           "read_state_dict"]
