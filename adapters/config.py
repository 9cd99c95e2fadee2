"""alpha-beta-CROWN YAML configs: the model, data, norm, eps and properties a verification user already has.

:func:`read_config` maps the fields that say *what* is verified (:data:`MAPPED`) to lipcert's own
terms (:class:`VerifierConfig`), lists the fields that only tune alpha-beta-CROWN's search
(:data:`TUNING`: solver, branch and bound, attack, devices) as ignored, and refuses every other
field with a :class:`~lipcert.errors.ConfigError` naming it.  Relative paths are resolved as
alpha-beta-CROWN does: against ``general.root_path`` when given, else the config's folder, else the
working directory.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lipcert.errors import ConfigError

MAPPED = ("model.name", "model.path", "model.onnx_path", "model.input_shape", "general.root_path",
          "general.csv_name", "data.dataset", "data.mean", "data.std", "data.start", "data.end",
          "specification.norm", "specification.epsilon", "specification.vnnlib_path",
          "specification.vnnlib_path_prefix", "specification.type", "specification.robustness_type",
          "model.onnx_loader")
"""Fields with a lipcert meaning (``type``, ``robustness_type`` and ``onnx_loader`` only at their defaults)."""

TUNING_SECTIONS = ("solver", "bab", "attack", "debug", "find_feasible_solution")
TUNING = ("general.device", "general.seed", "general.conv_mode", "general.deterministic", "general.double_fp",
          "general.loss_reduction_func", "general.sparse_alpha", "general.sparse_interm", "general.save_adv_example",
          "general.eval_adv_example", "general.show_adv_example", "general.precompile_jit",
          "general.complete_verifier", "general.enable_incomplete_verification", "general.get_crown_verified_acc",
          "general.save_output", "general.output_file", "general.return_optimized_model", "general.results_file",
          "general.record_bounds", "general.buffer_has_batchdim", "general.verify_onnxruntime_output",
          "general.graph_optimizer", "general.no_batchdim", "general.save_bounds_file", "model.onnx_quirks",
          "model.onnx_optimization_flags", "model.check_optimized", "model.cache_onnx_conversion",
          "model.debug_onnx", "model.onnx_vnnlib_joint_optimization_flags", "model.with_jacobian",
          "data.num_outputs", "specification.rhs_offset")
"""Fields that tune how alpha-beta-CROWN searches (devices, solvers, output files), not what is proven."""

DATASETS = {"MNIST": ("mnist", (1, 28, 28)), "CIFAR": ("cifar10", (3, 32, 32))}
"""alpha-beta-CROWN data set names that are lipcert data sets (raw test images in [0, 1], normalized by
mean/std), with the shape of one input (the model's input shape when the config gives none)."""

_DEFAULTS = {"specification.type": "lp", "specification.robustness_type": "verified-acc",
             "model.onnx_loader": "default_onnx_and_vnnlib_loader", "data.start": 0}


@dataclass(frozen=True)
class VerifierConfig:
    """An alpha-beta-CROWN config in lipcert's terms (None: the config does not say).

    Attributes
    ----------
    path : Path
        The config file.
    model : str or None
        A model file (``.onnx``, ``.pth``), or a model class ``"module:Class"``/``"file.py:Class"``
        (from ``Customized(...)``), to be given ``weights``.
    weights : str or None
        The state_dict of a model class (``model.path``).
    model_args : dict or list or None
        Keyword or positional arguments of the model class.
    model_path : list of str
        Folders where the model class's module is looked up.
    input_shape : tuple of int or None
        One input without the batch axis.
    dataset : str or None
        lipcert data set name.
    mean, std : list of float or None
        Per-channel normalization of raw inputs.
    n : int or None
        Certify the first ``n`` inputs.
    norm : "2" or "inf" or None
    eps : float or None
        Radius in raw input units (alpha-beta-CROWN's ``epsilon`` before its division by std).
    vnnlib_path, csv_name : str or None
        One VNN-LIB property, or a VNN-COMP instances CSV (``onnx,vnnlib,timeout`` rows).
    vnnlib_prefix : str or None
        Folder the CSV's paths are relative to.
    ignored : tuple of str
        Tuning fields present in the config, not used by lipcert.
    """

    path: Path
    model: str | None = None
    weights: str | None = None
    model_args: dict[str, Any] | list[Any] | None = None
    model_path: list[str] = field(default_factory=list)
    input_shape: tuple[int, ...] | None = None
    dataset: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    n: int | None = None
    norm: str | None = None
    eps: float | None = None
    vnnlib_path: str | None = None
    csv_name: str | None = None
    vnnlib_prefix: str | None = None
    ignored: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line naming the config and what it set."""
        set_ = [f"{k}={v}" for k, v in (("model", self.model), ("weights", self.weights), ("dataset", self.dataset),
                                        ("norm", self.norm), ("eps", self.eps), ("vnnlib", self.vnnlib_path),
                                        ("csv", self.csv_name)) if v is not None]
        return f"config {self.path}: {', '.join(set_)}" + (f"; ignored (verifier tuning): {', '.join(self.ignored)}"
                                                          if self.ignored else "")


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and name.split(".")[0] not in TUNING_SECTIONS:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def read_config(path: str | Path) -> VerifierConfig:
    """Read an alpha-beta-CROWN YAML config (module docstring); ConfigError names every field that does not map."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such config file: {path}")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not readable YAML: {exc}") from exc
    if not isinstance(tree, Mapping):
        raise ConfigError(f"{path} is not an alpha-beta-CROWN config (expected a mapping of sections, got "
                          f"{type(tree).__name__})")
    fields = {k: v for k, v in _flatten(tree).items() if v is not None}
    unknown = [k for k in fields if k not in MAPPED and k not in TUNING and k.split(".")[0] not in TUNING_SECTIONS]
    unknown += [f"{k}={fields[k]!r}" for k, default in _DEFAULTS.items() if k in fields and fields[k] != default]
    if unknown:
        raise ConfigError(f"{path}: lipcert cannot map {', '.join(unknown)} (it maps {', '.join(MAPPED)}; "
                          f"{', '.join(_DEFAULTS)} only at {', '.join(map(repr, _DEFAULTS.values()))}); remove "
                          "them or give the run with lipcert's own flags")
    ignored = tuple(k for k in fields if k not in MAPPED)
    root = Path(str(fields["general.root_path"])) if "general.root_path" in fields else None
    resolve = _resolver(path.parent, root)
    model, weights, args, model_path = _model(fields, path, root, resolve)
    dataset = _dataset(fields.get("data.dataset"), path)
    shape = _input_shape(fields.get("model.input_shape"), path)
    if shape is None and dataset is not None and weights is not None:  # a torch class: the data set's shape
        shape = DATASETS[str(fields["data.dataset"])][1]
    return VerifierConfig(
        path=path, model=model, weights=weights, model_args=args, model_path=model_path, input_shape=shape,
        dataset=dataset, mean=_floats(fields.get("data.mean"), "data.mean", path),
        std=_floats(fields.get("data.std"), "data.std", path),
        n=_n(fields, path), norm=_norm(fields.get("specification.norm"), path), eps=_eps(fields, path),
        vnnlib_path=resolve(fields.get("specification.vnnlib_path")), csv_name=resolve(fields.get("general.csv_name")),
        vnnlib_prefix=resolve(fields.get("specification.vnnlib_path_prefix")), ignored=ignored)


def _resolver(config_dir: Path, root: Path | None) -> Any:
    def resolve(value: Any) -> str | None:
        if value is None:
            return None
        p = Path(str(value)).expanduser()
        if p.is_absolute():
            return str(p)
        for base in ([root] if root is not None else []) + [config_dir]:
            if (base / p).exists():
                return str(base / p)
        return str(root / p) if root is not None else str(p)
    return resolve


def _model(fields: dict[str, Any], path: Path, root: Path | None, resolve: Any
           ) -> tuple[str | None, str | None, dict[str, Any] | list[Any] | None, list[str]]:
    """The model source, its weights (for a class), the class arguments and the folders of its code."""
    if "model.onnx_path" in fields:
        return resolve(fields["model.onnx_path"]), None, None, []
    name = fields.get("model.name")
    if name is None:
        return resolve(fields.get("model.path")), None, None, []
    where, cls, args, kwargs = _customized(str(name), "model.name", path)
    folders = [str(f) for f in ([root] if root is not None else []) + [path.parent, path.parent / "custom"]
               if f.is_dir()]
    if where.endswith(".py"):
        where = resolve(where) or where
    if "model.path" not in fields:
        raise ConfigError(f"{path}: model.name {name} has no model.path (the state_dict file of its weights)")
    if args and kwargs:
        raise ConfigError(f"{path}: model.name {name} mixes positional and keyword arguments; lipcert passes one "
                          "kind (use keywords)")
    return f"{where}:{cls}", resolve(fields["model.path"]), (kwargs or list(args) or None), folders


def _customized(text: str, key: str, path: Path) -> tuple[str, str, tuple[Any, ...], dict[str, Any]]:
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        node = None
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Customized"
            and len(node.args) >= 2):
        raise ConfigError(f"{path}: {key} {text!r} is one of alpha-beta-CROWN's built-in model definitions, which "
                          "lipcert does not ship; write it as Customized(\"file.py\", \"Class\", ...) or pass "
                          "--model file.py:Class --weights FILE")
    try:
        values = [ast.literal_eval(a) for a in node.args]
        kwargs = {str(k.arg): ast.literal_eval(k.value) for k in node.keywords}
    except ValueError as exc:
        raise ConfigError(f"{path}: {key} {text!r}: arguments must be literals ({exc})") from exc
    return str(values[0]), str(values[1]), tuple(values[2:]), kwargs


def _input_shape(value: Any, path: Path) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        shape = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: model.input_shape {value!r} is not a list of integers") from None
    return shape[1:] if len(shape) > 1 and shape[0] in (-1, 1) else shape


def _dataset(value: Any, path: Path) -> str | None:
    if value is None:
        return None
    if str(value) not in DATASETS:
        raise ConfigError(f"{path}: data.dataset {value!r} cannot be mapped (lipcert maps "
                          f"{', '.join(DATASETS)}); pass --dataset with a lipcert data set or an .npz of your inputs")
    return DATASETS[str(value)][0]


def _floats(value: Any, key: str, path: Path) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(v) for v in (value if isinstance(value, list | tuple) else [value])]
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: {key} {value!r} is not a number or a list of numbers") from None


def _n(fields: dict[str, Any], path: Path) -> int | None:
    end = fields.get("data.end")
    if end is None:
        return None
    if not isinstance(end, int) or end < 1:
        raise ConfigError(f"{path}: data.end {end!r} is not a positive integer")
    return end


def _norm(value: Any, path: Path) -> str | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if number == math.inf:
        return "inf"
    if number == 2:
        return "2"
    raise ConfigError(f"{path}: specification.norm {value!r} cannot be mapped (lipcert certifies the 2 and .inf norms)")


def _eps(fields: dict[str, Any], path: Path) -> float | None:
    value = fields.get("specification.epsilon")
    if value is None:
        return None
    try:
        eps = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: specification.epsilon {value!r} is not a number") from None
    if not math.isfinite(eps) or eps < 0:
        raise ConfigError(f"{path}: specification.epsilon {value!r} is not a finite non-negative radius")
    return eps


__all__ = ["DATASETS", "MAPPED", "TUNING", "TUNING_SECTIONS", "VerifierConfig", "read_config"]
