"""PyTorch modules as :class:`~lipcert.Network`: ``from_module(module, input_shape=...)``.

The module is traced with ``torch.fx`` (``nn.Sequential`` and general modules alike; standard
``torch.nn`` layers are leaves) and the graph is interpreted node by node.  Values are
*constants* (parameters, buffers, Python numbers, shapes of one sample) or *dynamic* (computed
from the input).  Each node with one dynamic argument becomes affine maps or activations
(:mod:`.torch_ops`); anything else is an :class:`~.graph.Issue`, and all issues are reported
together.  One sample is a tensor of shape ``(1, *input_shape)``, so ``x.view(x.size(0), -1)``
works per sample.
"""

from __future__ import annotations

import copy
import operator
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx
from torch import nn

from lipcert.errors import ModelLoadError
from lipcert.graph import AnyNetwork

from . import groupsort, l2pool, torch_library, torch_sort
from .common import RangeOption, finish, require_finite
from .graph import DYNAMIC, Conversion, Issue, Layer, NotCovered, chain_between, make_layers, reaching
from .residual import SUBTRACTIONS
from .maxpool import for_input
from .torch_ops import FUNCTIONS, METHODS, Call, function_why, module_handler, module_why

_SHAPE_METHODS = {"size", "dim", "numel", "ndimension", "nelement", "get_device"}
_SHAPE_ATTRS = {"shape", "ndim", "dtype", "device", "is_cuda", "requires_grad"}
_STATEFUL = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


class Dyn:
    """A dynamic value: its float64 value on the probe sample (None when unknown)."""

    def __init__(self, probe: torch.Tensor | None) -> None:
        self.probe = probe


def _find(value: Any) -> list[Dyn]:
    if isinstance(value, Dyn):
        return [value]
    if isinstance(value, list | tuple):
        return [d for v in value for d in _find(v)]
    if isinstance(value, dict):
        return [d for v in value.values() for d in _find(v)]
    if isinstance(value, slice):
        return _find([value.start, value.stop, value.step])
    return []


def _replace(value: Any, how: Any) -> Any:
    """``value`` with each Dyn replaced by ``how(dyn)``."""
    if isinstance(value, Dyn):
        return how(value)
    if isinstance(value, list | tuple):
        return type(value)(_replace(v, how) for v in value)
    if isinstance(value, dict):
        return {k: _replace(v, how) for k, v in value.items()}
    return value


class _Tracer(torch.fx.Tracer):
    """fx's tracer, with the deel-torchlip / orthogonium activations lipcert converts and L2-norm poolings
    (``LPPool2d``, ``F.lp_pool2d``) kept as leaves and the library layers of :mod:`.torch_library` traced
    through their load-time forwards (``forwards``, by id)."""

    def __init__(self, forwards: dict[int, Any] | None = None) -> None:
        super().__init__(autowrap_functions=(torch.nn.functional.lp_pool2d,))  # a whole L2-norm pooling
        self.forwards = forwards or {}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if id(m) in self.forwards:
            return False
        return (groupsort.is_leaf(m) or isinstance(m, nn.LPPool2d)
                or super().is_leaf_module(m, module_qualified_name))

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        return super().call_module(m, self.forwards.get(id(m), forward), args, kwargs)


def trace(module: nn.Module) -> torch.fx.GraphModule:
    """``torch.fx.symbolic_trace`` with a clear error for untraceable modules."""
    if _Tracer().is_leaf_module(module, ""):  # fx would trace into the forward of a bare torch layer
        module = nn.Sequential(OrderedDict([(type(module).__name__, module)]))
    if torch_library.holds_library_layer(module):  # fx stores their load-time constants on the root: trace a copy
        module = copy.deepcopy(module)
    forwards = torch_library.traced_forwards(module)
    try:
        return torch.fx.GraphModule(module, _Tracer(forwards).trace(module), type(module).__name__)
    except Exception as exc:  # noqa: BLE001 - fx raises many kinds of errors on untraceable code
        raise ModelLoadError(
            f"torch.fx could not trace {type(module).__name__} ({type(exc).__name__}: {exc}). lipcert reads general "
            "modules through torch.fx, which needs forward() without control flow that depends on the input; "
            "rewrite forward, or export the model to ONNX (torch.onnx.export(..., dynamo=False)) and load the "
            ".onnx file") from exc


class _Interpreter:
    def __init__(self, module: nn.Module, input_shape: tuple[int, ...], source: str) -> None:
        self.module, self.source = module, source
        self.gm = trace(module)
        self.input_shape = input_shape
        self.sample_shape = (1, *input_shape)
        self.env: dict[str, Any] = {}
        self.layers: list[Layer] = []
        self.issues: list[tuple[torch.fx.Node, Issue]] = []
        self.input_name = ""
        self.output: Any = None
        self.fused: set[torch.fx.Node] = set()
        self.tried: set[torch.fx.Node] = set()

    def run(self) -> Conversion:
        for node in self.gm.graph.nodes:
            self.step(node)
        return self.finish()

    def issue(self, node: torch.fx.Node, op_type: str, why: str, name: str | None = None) -> None:
        """Record an unsupported node, and run it on the probe so that the nodes after it are checked too."""
        self.issues.append((node, Issue(name or node.name, op_type, why)))
        args = torch.fx.node.map_arg(node.args, lambda n: self.env[n.name])
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: self.env[n.name])
        out: Any = None
        if node.op == "call_module" and isinstance(self.gm.get_submodule(str(node.target)), _STATEFUL):
            # running it in training mode would update its statistics; it keeps the shape of its input
            self.env[node.name] = next((d for d in _find(args) if d.probe is not None), Dyn(None))
            return
        for dtype in (torch.float64, torch.float32):  # the module's own layers may need their own dtype
            def probe(d: Dyn, dtype: torch.dtype = dtype) -> Any:
                return None if d.probe is None else d.probe.to(dtype)
            try:
                out = self._call(node, _replace(args, probe), _replace(kwargs, probe))
                break
            except Exception:  # noqa: BLE001 - only means that the shapes downstream are unknown
                continue
        known = isinstance(out, torch.Tensor) and out.is_floating_point()
        self.env[node.name] = Dyn(out.detach().to(torch.float64) if known else None)

    def step(self, node: torch.fx.Node) -> None:
        if node in self.fused:
            return
        if node.op == "placeholder":
            if not self.input_name:
                self.input_name = node.name
                gen = torch.Generator().manual_seed(0)
                self.env[node.name] = Dyn(torch.rand(self.sample_shape, generator=gen, dtype=torch.float64))
            elif node.args:
                self.env[node.name] = node.args[0]
            else:
                raise ModelLoadError(f"{self.source}: forward() takes more than one input ({node.name!r}); lipcert "
                                     "needs a model with exactly one input tensor")
            return
        if node.op == "get_attr":
            self.env[node.name] = self._attr(str(node.target))
            return
        if node.op == "output":
            self.output = torch.fx.node.map_arg(node.args[0], lambda n: self.env[n.name])
            return
        args = torch.fx.node.map_arg(node.args, lambda n: self.env[n.name])
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: self.env[n.name])
        dyns = _find([args, kwargs])
        if not dyns:
            self.env[node.name] = self._call(node, args, kwargs)
            return
        if any(d.probe is None for d in dyns):
            self.env[node.name] = Dyn(None)  # downstream of an earlier issue
            return
        if self._is_shape_query(node):
            probe_args = _replace(args, lambda d: d.probe)
            self.env[node.name] = self._call(node, probe_args, _replace(kwargs, lambda d: d.probe))
            return
        op_type, name = self._describe(node)
        if self._fuse_sorting(node, dyns[0]):
            return
        if len(dyns) == 2 and node.target is l2pool.l2_norm_merge:
            self._norm_merge(node, args, op_type, name)
            return
        if len(dyns) == 2 and self._merge(node, args, kwargs, op_type, name):
            return
        if len(dyns) > 1:
            self.issue(node, op_type, _merge_why(op_type), name)
            return
        self.convert(node, args, kwargs, dyns[0], op_type, name)

    def _concat(self, node: torch.fx.Node, args: Any, kwargs: Any, name: str) -> bool:
        """``torch.cat([a, b], dim)`` of two branches as a merge layer with its axis; False if it is not one."""
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        items = list(tensors) if isinstance(tensors, list | tuple) else []
        parts = [t for t in items if isinstance(t, torch.fx.Node)]
        if len(parts) != 2 or len(items) != 2 or not isinstance(dim, int) or parts[0] is parts[1]:
            return False
        (first, second), (a, b) = parts, (self.env[t.name].probe for t in parts)
        merged, axis = torch.cat([a, b], dim), dim % a.ndim
        self.layers.append(Layer(name, "cat", first.name, node.name, tuple(a.shape), tuple(merged.shape),
                                 detail=f"[{first.name}; {second.name}] on axis {axis}", other=second.name, axis=axis))
        self.env[node.name] = Dyn(merged)
        return True

    def _merge(self, node: torch.fx.Node, args: Any, kwargs: Any, op_type: str, name: str) -> bool:
        """``a + b`` or ``a - b`` of two branches as a merge layer (adapters/residual.py); False if it is not one."""
        if op_type in ("cat", "concat"):
            return self._concat(node, args, kwargs, name)
        if op_type not in _MERGES or kwargs or len(node.args) != 2 or not all(
                isinstance(a, torch.fx.Node) and isinstance(d, Dyn) for a, d in zip(node.args, args)):
            return False
        first, second = node.args
        assert isinstance(first, torch.fx.Node) and isinstance(second, torch.fx.Node)
        a, b = args[0].probe, args[1].probe
        if first is second:
            return False
        if a.shape != b.shape:
            self.issue(node, op_type, f"it adds two branches of shapes {tuple(a.shape)} and {tuple(b.shape)}; a "
                                      "residual connection needs equal shapes (no broadcasting between branches)", name)
            return True
        if op_type in ("iadd", "isub", "Tensor.add_", "Tensor.sub_") and len(first.users) > 1:
            self.issue(node, op_type, "it adds in place to a tensor that is used again afterwards; lipcert reads the "
                                      "graph as pure functions (write out = out + x)", name)
            return True
        self.layers.append(Layer(name, op_type, first.name, node.name, tuple(a.shape), tuple(a.shape),
                                 detail=f"{first.name} {'-' if op_type in SUBTRACTIONS else '+'} {second.name}",
                                 other=second.name))
        self.env[node.name] = Dyn(a - b if op_type in SUBTRACTIONS else a + b)
        return True

    def _norm_merge(self, node: torch.fx.Node, args: Any, op_type: str, name: str) -> None:
        """An L2NormResidual's merge of x and fn(x) (:func:`.l2pool.l2_norm_merge`) as a merge layer."""
        first, second = node.args[0], node.args[1]
        assert isinstance(first, torch.fx.Node) and isinstance(second, torch.fx.Node)
        try:
            layer, value = l2pool.norm_merge_layer(name, first.name, second.name, node.name, args[0].probe,
                                                          args[1].probe, args[2])
        except ValueError as exc:
            self.issue(node, op_type, str(exc), name)
            return
        self.layers.append(layer)
        self.env[node.name] = Dyn(value)

    def _fuse_sorting(self, node: torch.fx.Node, dyn: Dyn) -> bool:
        """Convert the calls from ``node`` on that compute a sorting activation (:mod:`.torch_sort`), if they do."""
        source = next((n for n in node.all_input_nodes if self.env.get(n.name) is dyn), None)
        if source is None or source in self.tried or dyn.probe is None:
            return False
        if not (len(source.users) > 1 or torch_sort.starts(node)):
            return False
        self.tried.add(source)
        constants = {k: v for k, v in self.env.items() if not isinstance(v, Dyn)}
        match = torch_sort.find(self.gm.graph, constants, source, node, tuple(dyn.probe.shape))
        if match is None:
            return False
        names = ", ".join(n.name for n in match.region)
        layers, out = make_layers(f"{match.label}({names})", match.label, source.name, match.exit.name, match.ops,
                                  dyn.probe)
        self.layers += layers
        self.fused.update(match.region)
        self.env.update({n.name: Dyn(None) for n in match.region})
        self.env[match.exit.name] = Dyn(out)
        return True

    def _attr(self, target: str) -> Any:
        obj: Any = self.gm
        for part in target.split("."):
            obj = getattr(obj, part)
        return obj

    def _call(self, node: torch.fx.Node, args: Any, kwargs: Any) -> Any:
        with torch.no_grad():
            if node.op == "call_module":
                return self.gm.get_submodule(str(node.target))(*args, **kwargs)
            if node.op == "call_method":
                return getattr(args[0], str(node.target))(*args[1:], **kwargs)
            return node.target(*args, **kwargs)  # type: ignore[operator]

    @staticmethod
    def _is_shape_query(node: torch.fx.Node) -> bool:
        if node.op == "call_method":
            return node.target in _SHAPE_METHODS
        if node.op == "call_function" and node.target is getattr:
            return len(node.args) > 1 and node.args[1] in _SHAPE_ATTRS
        return False

    def _describe(self, node: torch.fx.Node) -> tuple[str, str]:
        if node.op == "call_module":
            return type(self.gm.get_submodule(str(node.target))).__name__, str(node.target)
        if node.op == "call_method":
            return f"Tensor.{node.target}", node.name
        return getattr(node.target, "__name__", str(node.target)), node.name

    def convert(self, node: torch.fx.Node, args: Any, kwargs: Any, dyn: Dyn, op_type: str, name: str) -> None:
        probe = dyn.probe
        if probe is None:  # step() only converts nodes whose input is known
            raise ModelLoadError(f"internal error: no probe value for the input of {node.name!r}")
        marked_args = _replace(args, lambda d: DYNAMIC)
        marked_kwargs = _replace(kwargs, lambda d: DYNAMIC)
        source = self._source_name(node, dyn)
        try:
            self._check_inplace(node, source)
            if node.op == "call_module":
                module = self.gm.get_submodule(str(node.target))
                handler = module_handler(module)
                if handler is None:
                    raise NotCovered(module_why(module))
                if len(args) != 1 or marked_args[0] is not DYNAMIC or kwargs:
                    raise NotCovered("called with extra arguments")
                ops = handler(module, tuple(probe.shape))
            else:
                table: dict[Any, Any] = METHODS if node.op == "call_method" else FUNCTIONS
                key: Any = node.target
                fn_handler = table.get(key) if _hashable(key) else None
                if fn_handler is None:
                    raise NotCovered(function_why(key) if node.op == "call_function" else
                                     f"Tensor.{key} is not an affine map or an elementwise activation known to lipcert")
                ops = fn_handler(Call(name, key, tuple(marked_args), dict(marked_kwargs), tuple(probe.shape)))
            layers, out = make_layers(name, op_type, source, node.name, for_input(ops, self.layers, source), probe)
        except NotCovered as exc:
            self.issue(node, op_type, str(exc.args[0]), name)
            return
        except (RuntimeError, ValueError, IndexError, TypeError) as exc:
            self.issue(node, op_type, f"could not be converted ({type(exc).__name__}: {exc})", name)
            return
        self.layers += layers
        self.env[node.name] = Dyn(out)

    def _check_inplace(self, node: torch.fx.Node, source: str) -> None:
        """An in-place operation whose input is read again would change what later nodes see."""
        inplace = node.kwargs.get("inplace") is True or (
            node.op == "call_module" and getattr(self.gm.get_submodule(str(node.target)), "inplace", False) is True)
        inplace = inplace or node.target in (operator.iadd, operator.isub, operator.imul, operator.itruediv)
        users = next((len(n.users) for n in node.all_input_nodes if n.name == source), 1)
        if inplace and users > 1:
            raise NotCovered("it works in place on a tensor that is used again afterwards; lipcert reads the graph "
                             "as pure functions (use the out-of-place version)")

    def _source_name(self, node: torch.fx.Node, dyn: Dyn) -> str:
        for n in node.all_input_nodes:
            if self.env.get(n.name) is dyn:
                return n.name
        raise ModelLoadError(f"internal error: input of {node.name!r} not found")

    def finish(self) -> Conversion:
        issues = [issue for _, issue in self.issues]
        layers = self.layers
        if not isinstance(self.output, Dyn):
            if _find(self.output):
                raise ModelLoadError(f"{self.source}: forward() returns {type(self.output).__name__}; lipcert needs "
                                     "a model that returns one tensor")
            raise ModelLoadError(f"{self.source}: the output does not depend on the input")
        if not issues:
            out_name = next(n.name for n in self.gm.graph.nodes if self.env.get(n.name) is self.output)
            chain = (reaching(self.layers, out_name) if any(layer.other for layer in self.layers) else
                     chain_between(self.layers, self.input_name, out_name))
            if chain is None:
                raise ModelLoadError(f"{self.source}: internal error: the output is not reached from the input")
            layers = chain
        return Conversion(self.source, "torch", self.input_name, self.sample_shape, self.input_shape,
                          tuple(layers), tuple(issues))


def _hashable(key: Any) -> bool:
    try:
        hash(key)
    except TypeError:
        return False
    return True


_MERGES = frozenset({"add", "iadd", "Tensor.add", "Tensor.add_", "sub", "isub", "Tensor.sub", "Tensor.sub_"})
"""fx op types (see ``_Interpreter._describe``) that add or subtract two branches."""


def _merge_why(op_type: str) -> str:
    if op_type in ("add", "Tensor.add", "iadd", "sub", "Tensor.sub"):
        return ("it adds two tensors computed from the input (a residual connection or a merge of branches); lipcert "
                "bounds chains of layers only")
    if op_type in ("cat", "concat", "stack"):
        return ("it concatenates more than two tensors computed from the input (a fork into three or more branches) "
                "or a branch with itself; lipcert joins exactly two branches of one fork per concatenation")
    if op_type in ("mul", "Tensor.mul", "matmul", "Tensor.matmul", "bmm", "einsum"):
        return "it multiplies two tensors computed from the input (gating or attention), which is not affine"
    return "it combines several tensors computed from the input, so the model is not a chain of layers"


def _shape(input_shape: Sequence[int] | None, source: str) -> tuple[int, ...]:
    if input_shape is None:
        raise ModelLoadError(f"{source}: input_shape is required for a torch module: the shape of one input without "
                             "the batch axis, e.g. input_shape=(1, 28, 28)")
    shape = tuple(int(s) for s in input_shape)
    if any(s <= 0 for s in shape):
        raise ModelLoadError(f"{source}: input_shape must have positive entries, got {shape}")
    return shape


def analyze_module(module: nn.Module, *, input_shape: Sequence[int] | None, source: str | None = None) -> Conversion:
    """Read a module into a :class:`~.graph.Conversion` (layers and every unsupported node), without building it."""
    if not isinstance(module, nn.Module):
        raise ModelLoadError(f"expected a torch.nn.Module, got {type(module).__name__}")
    if isinstance(module, torch.jit.ScriptModule):
        raise ModelLoadError("TorchScript modules cannot be traced by torch.fx; load the original Python module, or "
                             "export to ONNX and load the .onnx file")
    name = source or type(module).__name__
    require_finite({k: t.detach().cpu().numpy() for k, t in [*module.named_parameters(), *module.named_buffers()]
                    if t.is_floating_point()}, lambda key: f"{name}: parameter {key!r}")
    shape = _shape(input_shape, name)
    if not any(m.training for m in module.modules() if isinstance(m, _STATEFUL)):  # running it has no side effects
        try:
            with torch.no_grad():
                module(torch.zeros((1, *shape), dtype=_dtype(module)))
        except Exception as exc:  # noqa: BLE001 - any failure of the user's module on this shape
            hint = torch_library.stale_dtype(module) or "check input_shape (one input without the batch axis)"
            raise ModelLoadError(f"{name} fails on an input of shape {(1, *shape)} ({type(exc).__name__}: {exc}); "
                                 f"{hint}") from exc
    return _Interpreter(module, shape, name).run()


def _dtype(module: nn.Module) -> torch.dtype:
    """The module's floating dtype (its first floating parameter or buffer), else torch's default."""
    floats = [p.dtype for p in list(module.parameters()) + list(module.buffers()) if p.is_floating_point()]
    return floats[0] if floats else torch.get_default_dtype()


def _reference(module: nn.Module, conv: Conversion) -> tuple[Any, torch.dtype]:
    dtype = _dtype(module)
    device = next((p.device for p in module.parameters()), torch.device("cpu"))

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = module(torch.as_tensor(x, dtype=dtype, device=device))
        return out.detach().to("cpu", torch.float64).numpy()  # its shape is checked by check_conversion

    return run, dtype


def from_module(module: nn.Module, *, input_shape: Sequence[int] | None = None,
                mean: Sequence[float] | float | None = None, std: Sequence[float] | float | None = None,
                input_range: RangeOption = "auto", max_dense_bytes: int | None = None,
                dense: bool = False, check: bool = True,
                rtol: float | None = None, check_samples: int = 16, source: str | None = None) -> AnyNetwork:
    """Convert a ``torch.nn.Module`` (in eval mode) to a :class:`~lipcert.Network`; see :func:`lipcert.load`.

    Raises
    ------
    ModelLoadError
        No input shape, an untraceable module, a model too large to materialize, or a failed
        conversion check against the module itself.
    UnsupportedOperatorError
        Layers outside the chain of affine maps and elementwise activations (all listed).
    """
    conv = analyze_module(module, input_shape=input_shape, source=source)
    return to_network(module, conv, mean=mean, std=std, input_range=input_range, max_dense_bytes=max_dense_bytes,
                      dense=dense, check=check, rtol=rtol, check_samples=check_samples)


def to_network(module: nn.Module, conv: Conversion, *, mean: Sequence[float] | float | None = None,
               std: Sequence[float] | float | None = None, input_range: RangeOption = "auto",
               max_dense_bytes: int | None = None, dense: bool = False, check: bool = True,
               rtol: float | None = None,
               check_samples: int = 16) -> AnyNetwork:
    """The :class:`~lipcert.Network` of ``module`` from its conversion ``conv`` (:func:`analyze_module`), checked
    against the module itself; the options and errors are those of :func:`from_module`."""
    conv.raise_issues()
    reference, dtype = _reference(module, conv)
    info = {"source": conv.source, "format": "torch", "input_name": conv.input_name,
            "module": type(module).__name__}
    return finish(conv, reference, mean=mean, std=std, input_range=input_range, max_dense_bytes=max_dense_bytes,
                  dense=dense, check=check, rtol=rtol, reference_dtype=dtype, check_samples=check_samples,
                  channels_last=False, info=info)


__all__ = ["analyze_module", "from_module", "to_network"]
