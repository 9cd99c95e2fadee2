"""Importing auto_LiRPA 0.3 next to torch 2.x and numpy 2: the compatibility shims, applied on first use.

auto_LiRPA is an optional dependency: ``pip install --no-deps auto-LiRPA==0.3`` (its metadata pins
torch<1.13, so pip cannot install it as a normal dependency next to torch 2.x).
"""

from __future__ import annotations

import importlib
import sys
import types
import warnings
from typing import Any

import numpy as np
import torch

from lipcert.errors import MissingExtraError

INSTALL = "pip install --no-deps auto-LiRPA==0.3 (after pip install 'lipcert[lirpa]')"


def _shim_numpy_arraysetops() -> None:
    # numpy 2 removed numpy.lib.arraysetops; auto_LiRPA 0.3 (operators/base.py) imports `isin` from it.
    if "numpy.lib.arraysetops" in sys.modules:
        return
    try:
        importlib.import_module("numpy.lib.arraysetops")  # numpy < 2
    except ImportError:
        shim = types.ModuleType("numpy.lib.arraysetops")
        shim.isin = np.isin  # type: ignore[attr-defined]
        sys.modules["numpy.lib.arraysetops"] = shim


def _shim_set_opset_version() -> None:
    # torch 2.x no longer exports symbolic_helper._set_opset_version, which auto_LiRPA 0.3's
    # parse_graph.py imports; it only sets the opset of the TorchScript-based ONNX pass.
    import torch.onnx.symbolic_helper as helper

    if hasattr(helper, "_set_opset_version"):
        return
    try:
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS  # torch >= 2.9
    except ImportError:
        GLOBALS = importlib.import_module("torch.onnx._globals").GLOBALS  # torch < 2.9

    def _set_opset_version(version: int) -> None:
        GLOBALS.export_onnx_opset_version = version

    helper._set_opset_version = _set_opset_version  # type: ignore[attr-defined]


def _shim_node_getitem() -> None:
    # torch._C.Node lost __getitem__ (node["value"]); auto_LiRPA 0.3 parse_graph.py reads node
    # attributes that way.  Same lookup as torch's own symbolic_helper._node_get.
    if hasattr(torch._C.Node, "__getitem__"):
        return

    def _node_getitem(node: Any, key: str) -> Any:
        return getattr(node, node.kindOf(key))(key)

    torch._C.Node.__getitem__ = _node_getitem  # type: ignore[method-assign]  # torch's stub still declares it


def _shim_named_members(lirpa: types.ModuleType) -> None:
    # torch 2.x's Module.parameters() passes remove_duplicate= to _named_members, which auto_LiRPA
    # 0.3's BoundedModule overrides without that argument (TypeError when CROWN builds a dense
    # identity for intermediate bounds); the override keeps its own de-duplication.
    cls = lirpa.BoundedModule
    original = cls._named_members
    if getattr(original, "lipcert_shim", False):
        return

    def _named_members(self: Any, get_members_fn: Any, prefix: str = "", recurse: bool = True,
                       remove_duplicate: bool = True) -> Any:
        return original(self, get_members_fn, prefix, recurse)

    _named_members.lipcert_shim = True  # type: ignore[attr-defined]
    cls._named_members = _named_members


def load_auto_lirpa() -> types.ModuleType:
    """Import auto_LiRPA after the compatibility shims, or raise :class:`MissingExtraError`."""
    _shim_numpy_arraysetops()
    _shim_set_opset_version()
    _shim_node_getitem()
    try:
        # auto_LiRPA 0.3 calls warnings.simplefilter("once") at import, which would override the
        # caller's warning filters process-wide, and its @torch.jit.script operators warn that
        # torch.jit.script is deprecated: import it with the filters saved and restored, and pass
        # on every import-time warning but that one.
        with warnings.catch_warnings(record=True) as caught:
            import auto_LiRPA
    except ImportError as exc:
        raise MissingExtraError(f"auto_LiRPA is needed to compare with IBP/CROWN/alpha-CROWN but cannot be "
                                f"imported ({exc}); install it with: {INSTALL}") from exc
    for w in caught:
        if "torch.jit.script" not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    _shim_named_members(auto_LiRPA)
    return auto_LiRPA
