"""ONNX models as :class:`~lipcert.Network`: ``from_onnx(path)``.

The graph is interpreted node by node in topological order.  Every tensor is either a
*constant* (initializers, Constant nodes, shape computations; folded with the ONNX reference
evaluator) or *dynamic* (computed from the model input).  A node with one dynamic input is
converted by :mod:`.onnx_ops` into affine maps and activations; ``Shape``/``Size`` of a
dynamic tensor are constants, since one sample has a fixed shape.  A dynamic tensor used by
several nodes that recombine through scalar elementwise operators (``x * sigmoid(x)``, GELU
written with Erf) is fused into one activation when it matches a known one exactly.
Everything else (MaxPool, residual Add, Concat of branches, ...) is recorded as an
:class:`~.graph.Issue`; all issues are reported together.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from lipcert.errors import ModelLoadError
from lipcert.graph import AnyNetwork

from . import l2pool, onnx_sort
from .common import RangeOption, finish, require_finite
from .graph import DYNAMIC, AffineOp, Conversion, Issue, Layer, NotCovered, Op, chain_between, make_layers, reaching
from .maxpool import for_input
from .onnx_node import users
from .onnx_ops import ELEMENTWISE, HANDLERS, OnnxNode, identify, merge_why, why_not
from .onnx_opset import upgrade
from .onnx_read import graph_input, input_spec, model_name, opset_of, read_model

MIN_OPSET, MAX_TESTED_OPSET = 9, 21
_SHAPE_ONLY = {"Shape", "Size"}
_RANDOM = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
_MAX_FUSED_NODES = 32


class Dyn:
    """A dynamic tensor: its value on the probe sample (None when it could not be computed)."""

    def __init__(self, probe: torch.Tensor | None) -> None:
        self.probe = probe


class _Interpreter:
    """One pass over the graph, building layers and issues."""

    def __init__(self, model: onnx.ModelProto, source: str, input_shape: Sequence[int] | None) -> None:
        self.notes: list[str] = []
        if opset_of(model) < MIN_OPSET:
            model, note = upgrade(model, opset_of(model), source)
            self.notes.append(note)
        self.model, self.source = model, source
        self.graph = model.graph
        self.opset = opset_of(model)
        self.nodes = list(self.graph.node)
        self.input_name, self.sample_shape, self.input_shape, self.elem_type = input_spec(model, source, input_shape)
        self.env: dict[str, Any] = {t.name: onnx.numpy_helper.to_array(t) for t in self.graph.initializer}
        require_finite(self.env, lambda name: f"{source}: initializer {name!r} ({users(self.nodes, name)})")
        gen = torch.Generator().manual_seed(0)
        self.env[self.input_name] = Dyn(torch.rand(self.sample_shape, generator=gen, dtype=torch.float64))
        self.consumers: dict[str, list[int]] = {}
        for i, node in enumerate(self.nodes):
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(i)
        self.outputs = [o.name for o in self.graph.output]
        self.layers: list[Layer] = []
        self.issues: list[tuple[int, Issue]] = []
        self.fused: set[int] = set()
        self.folded: set[int] = set()
        self.tried_fusion: set[str] = set()

    # ---------------------------------------------------------------- helpers
    def label(self, i: int) -> str:
        node = self.nodes[i]
        return node.name or f"#{i} ({node.op_type} -> {node.output[0] if node.output else '?'})"

    def issue(self, i: int, why: str) -> None:
        self.issues.append((i, Issue(self.label(i), self.nodes[i].op_type, why)))

    def value(self, name: str, i: int) -> Any:
        if not name:
            return None
        if name not in self.env:
            raise ModelLoadError(f"{self.source}: input {name!r} of node {self.label(i)!r} is not produced by any "
                                 "earlier node or initializer (the graph is not topologically sorted or is broken)")
        return self.env[name]

    def evaluate(self, i: int, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run one node with the ONNX reference evaluator (constant folding)."""
        from onnx.reference import ReferenceEvaluator

        node = self.nodes[i]
        ins = [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(feeds[n].dtype), None)
               for n in dict.fromkeys(n for n in node.input if n)]
        outs = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in node.output if n]
        graph = onnx.helper.make_graph([node], "fold", ins, outs)
        opsets = {e.domain or "": int(e.version) for e in self.model.opset_import}
        names = [n for n in dict.fromkeys(node.input) if n]
        result = ReferenceEvaluator(graph, opsets=opsets).run(None, {n: feeds[n] for n in names})
        return [np.asarray(r) for r in result]

    def _feeds(self, i: int) -> dict[str, np.ndarray] | None:
        feeds = {}
        for name in self.nodes[i].input:
            if not name:
                continue
            v = self.env[name]
            if isinstance(v, Dyn):
                if v.probe is None:
                    return None
                v = v.probe.numpy().astype(onnx.helper.tensor_dtype_to_np_dtype(self.elem_type))
            feeds[name] = v
        return feeds

    def _set_outputs(self, i: int, values: list[Any]) -> None:
        names = [n for n in self.nodes[i].output if n]
        for k, name in enumerate(names):
            self.env[name] = values[k] if k < len(values) else Dyn(None)

    def _fallback(self, i: int) -> None:
        """Outputs of an unsupported node, on the probe, so that the analysis can go on."""
        feeds = self._feeds(i)
        try:
            values = [] if feeds is None else self.evaluate(i, feeds)
        except Exception:  # noqa: BLE001 - any failure only means the shapes downstream are unknown
            values = []
        self._set_outputs(i, [Dyn(torch.as_tensor(np.asarray(v, dtype=np.float64))) for v in values])

    # ---------------------------------------------------------------- main loop
    def run(self) -> Conversion:
        if self.opset > MAX_TESTED_OPSET:
            self.notes.append(f"opset {self.opset} is newer than the opsets tested ({MIN_OPSET}-{MAX_TESTED_OPSET})")
        for i, node in enumerate(self.nodes):  # fold the constant part of the graph first
            if all(not n or isinstance(self.env.get(n), np.ndarray) for n in node.input):
                self.fold(i)
                self.folded.add(i)
        for i, node in enumerate(self.nodes):
            if i not in self.fused and i not in self.folded:
                self.step(i, node)
        return self.finish()

    def step(self, i: int, node: onnx.NodeProto) -> None:
        inputs = [self.value(n, i) for n in node.input]
        dyn = [k for k, v in enumerate(inputs) if isinstance(v, Dyn)]
        if node.domain not in ("", "ai.onnx"):
            self.issue(i, f"operator of the custom domain {node.domain!r} is not supported")
            self._fallback(i)
            return
        if not dyn:
            self.fold(i)
            return
        if node.op_type in _SHAPE_ONLY:
            self.fold(i)
            return
        if any(inputs[k].probe is None for k in dyn):
            self._set_outputs(i, [])  # downstream of an earlier issue; nothing new to report
            return
        source = node.input[dyn[0]]
        if node.op_type in ("Pow", "LpPool") and dyn == [0] and self.fuse_l2pool(i, node, inputs[0].probe):
            return
        if source not in self.tried_fusion and (len(dyn) > 1 or len(self._dynamic_users(source)) > 1
                                                or node.op_type in onnx_sort.STARTS):
            self.tried_fusion.add(source)
            if self.fuse(source, i) or self.fuse_sorting(source, i):
                return
        elif node.op_type in onnx_sort.STARTS and self.fuse_sorting(source, i):
            return  # a sorting region reading a tensor that also feeds another branch (a skip connection)
        if node.op_type in ("Add", "Sub") and len(dyn) == 2 and node.input[0] != node.input[1]:
            self.merge(i, node, [inputs[k].probe for k in dyn])
            return
        if node.op_type == "Concat" and len(node.input) == 2 == len(dyn) and node.input[0] != node.input[1]:
            self.concat(i, node, [inputs[k].probe for k in dyn])
            return
        if len({node.input[k] for k in dyn}) > 1 or len(dyn) > 1:
            self.issue(i, merge_why(node.op_type))
            self._fallback(i)
            return
        self.convert(i, node, inputs, dyn[0])

    def merge(self, i: int, node: onnx.NodeProto, probes: list[torch.Tensor]) -> None:
        """An Add or Sub of two branches: a merge layer (adapters/residual.py), if their shapes agree."""
        a, b = probes
        if a.shape != b.shape:
            self.issue(i, f"it adds two branches of shapes {tuple(a.shape)} and {tuple(b.shape)}; a residual "
                          "connection needs equal shapes (broadcasting between branches is not supported)")
            self._fallback(i)
            return
        self.layers.append(Layer(self.label(i), node.op_type, node.input[0], node.output[0], tuple(a.shape),
                                 tuple(a.shape), detail=f"{node.input[0]} {'+' if node.op_type == 'Add' else '-'} "
                                 f"{node.input[1]}", other=node.input[1]))
        self.env[node.output[0]] = Dyn(a + b if node.op_type == "Add" else a - b)

    def concat(self, i: int, node: onnx.NodeProto, probes: list[torch.Tensor]) -> None:
        """A Concat of two branches: a merge layer with its axis (adapters/residual.py)."""
        axis = next(x.i for x in node.attribute if x.name == "axis") % probes[0].ndim
        merged = torch.cat(probes, axis)
        self.layers.append(Layer(self.label(i), node.op_type, node.input[0], node.output[0], tuple(probes[0].shape),
                                 tuple(merged.shape), detail=f"[{node.input[0]}; {node.input[1]}] on axis {axis}",
                                 other=node.input[1], axis=axis))
        self.env[node.output[0]] = Dyn(merged)

    def _dynamic_users(self, name: str) -> list[int]:
        return [j for j in self.consumers.get(name, []) if self.nodes[j].op_type not in _SHAPE_ONLY]

    def fold(self, i: int) -> None:
        node = self.nodes[i]
        if node.op_type in _RANDOM:
            self.issue(i, "random operators make the model non-deterministic")
            self._set_outputs(i, [])
            return
        feeds = self._feeds(i)
        try:
            values = self.evaluate(i, feeds or {})
        except Exception as exc:  # noqa: BLE001 - reported as an issue with the evaluator's message
            self.issue(i, f"this constant node could not be evaluated ({type(exc).__name__}: {exc})")
            self._set_outputs(i, [])
            return
        self._set_outputs(i, values)

    def convert(self, i: int, node: onnx.NodeProto, inputs: list[Any], dyn: int) -> None:
        handler = HANDLERS.get(node.op_type)
        if handler is None:
            self.issue(i, why_not(node.op_type))
            self._fallback(i)
            return
        extra = [n for n in node.output[1:] if n and (self.consumers.get(n) or n in self.outputs)]
        if extra:
            self.issue(i, f"its extra output {extra[0]!r} is used, which only exists in training mode")
            self._fallback(i)
            return
        probe = inputs[dyn].probe
        view = OnnxNode(node, self.opset, tuple(DYNAMIC if k == dyn else v for k, v in enumerate(inputs)), dyn,
                        tuple(probe.shape))
        try:
            ops = for_input(handler(view), self.layers, node.input[dyn])
            layers, out = make_layers(self.label(i), node.op_type, node.input[dyn], node.output[0], ops, probe)
        except NotCovered as exc:
            self.issue(i, str(exc.args[0]))
            self._fallback(i)
            return
        except (RuntimeError, ValueError, IndexError, TypeError) as exc:
            self.issue(i, f"could not be converted ({type(exc).__name__}: {exc})")
            self._fallback(i)
            return
        self.layers += layers
        self.env[node.output[0]] = Dyn(out)

    # ---------------------------------------------------------------- fused elementwise activations
    def fuse(self, source: str, start: int) -> bool:
        """Fuse the scalar elementwise subgraph reading ``source`` into one activation, if it is one."""
        region: list[int] = []
        inside = {source}
        for j in range(start, len(self.nodes)):
            node = self.nodes[j]
            if not any(n in inside for n in node.input):
                continue
            if node.op_type in _SHAPE_ONLY:
                continue
            if node.op_type not in ELEMENTWISE or len(node.output) != 1 or j in self.fused:
                return False
            for n in node.input:
                if n and n not in inside:
                    v = self.env.get(n)
                    if not isinstance(v, np.ndarray) or v.size != 1:
                        return False
            region.append(j)
            inside.add(node.output[0])
            exits = self._exits(region, inside)
            users_of_source = set(self._dynamic_users(source))
            if users_of_source <= set(region) and len(exits) == 1 and exits[0] == node.output[0]:
                return self._replace(source, region, exits[0])
            if len(region) >= _MAX_FUSED_NODES:
                return False
        return False

    def _exits(self, region: list[int], inside: set[str]) -> list[str]:
        members = set(region)
        out = []
        for j in region:
            name = self.nodes[j].output[0]
            users = [u for u in self._dynamic_users(name) if u not in members]
            if users or name in self.outputs:
                out.append(name)
        return out

    def _scalar_function(self, source: str, region: list[int], z: torch.Tensor) -> dict[str, torch.Tensor]:
        values: dict[str, torch.Tensor] = {source: z}
        for j in region:
            node = self.nodes[j]
            args = [values[n] if n in values else torch.as_tensor(self.env[n], dtype=torch.float64)
                    for n in node.input if n]
            if node.op_type == "Softplus":
                values[node.output[0]] = torch.nn.functional.softplus(args[0])
            else:
                values[node.output[0]] = ELEMENTWISE[node.op_type](*args)
        return values

    def _replace(self, source: str, region: list[int], exit_name: str) -> bool:
        grid = torch.cat([torch.linspace(-12, 12, 4801, dtype=torch.float64),
                          torch.tensor([-50.0, -30.0, -20.0, 20.0, 30.0, 50.0], dtype=torch.float64)])
        with torch.no_grad():
            g = self._scalar_function(source, region, grid)[exit_name]
        found = identify(grid, g)
        if found is None:
            return False
        act, a, d = found
        probe = self.env[source].probe
        ops: list[Op] = [act] if act is not None else []
        if act is None or a != 1.0 or d != 0.0:
            ops.append(AffineOp(lambda x, b: a * x + d if b else a * x, 0, f"{a:g} x + {d:g}"))
        names = ", ".join(self.label(j) for j in region)
        label = f"fused({names})"
        layers, out = make_layers(label, "+".join(self.nodes[j].op_type for j in region), source, exit_name,
                                       ops, probe)
        self.layers += layers
        with torch.no_grad():
            values = self._scalar_function(source, region, probe)
        for j in region:
            self.env[self.nodes[j].output[0]] = Dyn(values[self.nodes[j].output[0]])
        self.env[exit_name] = Dyn(out)
        self.fused.update(region)
        what = "an affine map" if act is None else f"{act.name}"
        self.notes.append(f"nodes {names} compute {what} elementwise" +
                          ("" if act is None or (a, d) == (1.0, 0.0) else f" (scaled: {a:g} * {act.name} + {d:g})"))
        return True

    def fuse_sorting(self, source: str, start: int) -> bool:
        """Replace the subgraph reading ``source`` by a sorting activation, if it computes one (:mod:`.onnx_sort`)."""
        opsets, probe = {e.domain or "": int(e.version) for e in self.model.opset_import}, self.env[source].probe
        match = onnx_sort.find(self.nodes, self.env, self._dynamic_users, self.outputs, source, start, probe, opsets,
                               self.elem_type)
        if match is None:
            return False
        names = ", ".join(self.label(j) for j in match.region)
        layers, out = make_layers(f"{match.label}({names})", match.label, source, match.exit, match.ops, probe)
        self.layers += layers
        self.env.update({**{n: Dyn(v) for n, v in match.values.items()}, match.exit: Dyn(out)})
        self.fused.update(match.region)
        self.notes.append(f"nodes {names} compute {match.label}, rewritten exactly with |.| (docs/decisions.md 19)")
        return True

    def fuse_l2pool(self, i: int, node: onnx.NodeProto, probe: torch.Tensor) -> bool:
        """An exported L2-norm pooling or ``LpPool`` (p = 2) as one pooling stage (:mod:`.l2pool`); a variant of
        the export pattern is an issue naming its node.  False when node ``i`` starts no pooling."""
        try:
            if node.op_type == "LpPool":
                region, exit_name, lp = [i], node.output[0], l2pool.onnx_lp_pool(node, tuple(probe.shape))
                if lp is None:
                    return False
                op = lp
            else:
                match = l2pool.onnx_match(self.nodes, self.env, self._dynamic_users, self.label, i, tuple(probe.shape))
                if match is None:
                    return self.fuse_norm_merge(i)
                region, exit_name, op = match.region, match.exit, match.op
            names = ", ".join(self.label(j) for j in region)
            layers, out = make_layers(f"l2pool({names})", "L2NormPool", node.input[0], exit_name, [op], probe)
        except NotCovered as exc:
            self.issue(i, str(exc.args[0]))
            self._fallback(i)
            return True
        self.layers += layers
        self.env[exit_name] = Dyn(out)
        self.fused.update(region)
        self.notes.append(f"nodes {names} compute an L2-norm pooling, a stage with its exact constant "
                          "(docs/decisions.md 43)")
        return True

    def fuse_norm_merge(self, i: int) -> bool:
        """orthogonium's exported L2NormResidual merge that node ``i`` begins as one merge layer (:mod:`.l2pool`)."""
        producers = {o: j for j, n in enumerate(self.nodes) for o in n.output}
        found = l2pool.onnx_norm_merge(self.nodes, self.env, self._dynamic_users, producers.get, i, self.label)
        if found is None:
            return False
        self.layers.append(found.layer)
        self.env[found.exit] = Dyn(found.value)
        self.fused.update(found.region)
        self.notes.append(f"nodes {', '.join(self.label(j) for j in found.region)} compute orthogonium's "
                          "L2NormResidual merge (docs/decisions.md 44)")
        return True

    # ---------------------------------------------------------------- result
    def finish(self) -> Conversion:
        needed = self._needed()
        issues = [issue for i, issue in self.issues if any(o in needed for o in self.nodes[i].output)]
        layers: list[Layer] = self.layers
        if len(self.outputs) != 1:
            issues.append(Issue(", ".join(self.outputs), "graph output",
                                f"the model has {len(self.outputs)} outputs; lipcert needs exactly one"))
        elif not issues:
            out = self.env.get(self.outputs[0])
            if not isinstance(out, Dyn):
                raise ModelLoadError(f"{self.source}: the output {self.outputs[0]!r} does not depend on the input")
            chain = (reaching(self.layers, self.outputs[0]) if any(layer.other for layer in self.layers) else
                     chain_between(self.layers, self.input_name, self.outputs[0]))
            if chain is None:
                raise ModelLoadError(f"{self.source}: internal error: output {self.outputs[0]!r} is not reached from "
                                     f"the input {self.input_name!r} through the converted layers")
            layers = chain
        channels_last = bool(layers) and layers[0].op_type == "Transpose" and len(self.sample_shape) >= 3 and \
            _moves_last_to_channel(layers[0].detail, len(self.sample_shape))
        return Conversion(self.source, "onnx", self.input_name, self.sample_shape, self.input_shape, tuple(layers),
                          tuple(issues), tuple(self.notes), channels_last=channels_last)

    def _needed(self) -> set[str]:
        needed = set(self.outputs)
        for node in reversed(self.nodes):
            if any(o in needed for o in node.output):
                needed.update(n for n in node.input if n)
        return needed


def _moves_last_to_channel(detail: str, rank: int) -> bool:
    """True for a Transpose 'perm [0, r-1, 1, ..., r-2]' (an NHWC input made NCHW)."""
    return detail == f"perm {[0, rank - 1] + list(range(1, rank - 1))}"


def convert_model(model: onnx.ModelProto, source: str, input_shape: Sequence[int] | None = None) -> Conversion:
    """Interpret a validated ONNX model (see :func:`analyze_onnx`); an opset older than 9 is first converted
    (:mod:`.onnx_opset`), which the Conversion's notes say."""
    return _Interpreter(model, source, input_shape).run()


def analyze_onnx(source: str | Path | onnx.ModelProto, *, input_shape: Sequence[int] | None = None) -> Conversion:
    """Read an ONNX model into a :class:`~.graph.Conversion` (layers and every unsupported node), not built."""
    model = read_model(source)
    return convert_model(model, model_name(source), input_shape)


def _reference(model: onnx.ModelProto, conv: Conversion, elem_type: int) -> Any:
    import onnxruntime as ort

    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ModelLoadError(f"{conv.source}: onnxruntime cannot run the model for the conversion check ({exc}); "
                             "pass check=False to skip the check") from exc
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
    dims = graph_input(model, conv.input_name).type.tensor_type.shape.dim
    dynamic_batch = conv.has_batch_axis and not (dims[0].HasField("dim_value") and dims[0].dim_value == 1)

    def run(x: np.ndarray) -> np.ndarray:
        batch = x.shape[0]
        if dynamic_batch:
            return np.asarray(session.run(None, {conv.input_name: x.astype(dtype)})[0]).reshape(batch, -1)
        outs = [session.run(None, {conv.input_name: x[k].reshape(conv.sample_shape).astype(dtype)})[0]
                for k in range(batch)]
        return np.stack([np.asarray(o).reshape(-1) for o in outs])

    return run


def from_onnx(source: str | Path | onnx.ModelProto, *, mean: Sequence[float] | float | None = None,
              std: Sequence[float] | float | None = None, input_shape: Sequence[int] | None = None,
              input_range: RangeOption = "auto", max_dense_bytes: int | None = None, dense: bool = False,
              check: bool = True, rtol: float | None = None, check_samples: int = 16) -> AnyNetwork:
    """Load an ONNX model as a :class:`~lipcert.Network` (see :func:`lipcert.load` for the options).

    Raises
    ------
    ModelLoadError
        Missing, corrupt or invalid file; a model too large to materialize densely; a failed
        conversion check against onnxruntime.
    UnsupportedOperatorError
        The model is not a chain of affine maps and elementwise slope-restricted activations;
        the message lists every offending node.
    """
    model = read_model(source)
    conv = convert_model(model, model_name(source), input_shape)
    return to_network(model, conv, mean=mean, std=std, input_range=input_range, max_dense_bytes=max_dense_bytes,
                      dense=dense, check=check, rtol=rtol, check_samples=check_samples)


def to_network(model: onnx.ModelProto, conv: Conversion, *, mean: Sequence[float] | float | None = None,
               std: Sequence[float] | float | None = None, input_range: RangeOption = "auto",
               max_dense_bytes: int | None = None, dense: bool = False, check: bool = True,
               rtol: float | None = None, check_samples: int = 16) -> AnyNetwork:
    """The :class:`~lipcert.Network` of ``model`` from its conversion ``conv`` (:func:`convert_model`), checked
    against onnxruntime; the options and errors are those of :func:`from_onnx`."""
    conv.raise_issues()
    elem_type = int(graph_input(model, conv.input_name).type.tensor_type.elem_type)
    reference = _reference(model, conv, elem_type) if check else None
    ref_dtype = torch.float64 if elem_type == onnx.TensorProto.DOUBLE else torch.float32
    ops = sorted({n.op_type for n in model.graph.node})
    info = {"source": conv.source, "format": "onnx", "input_name": conv.input_name, "opset": opset_of(model),
            "onnx_ops": ops, "channels_last": conv.channels_last}
    return finish(conv, reference, mean=mean, std=std, input_range=input_range, max_dense_bytes=max_dense_bytes,
                  dense=dense, check=check, rtol=rtol, reference_dtype=ref_dtype, check_samples=check_samples,
                  channels_last=conv.channels_last, info=info)


__all__ = ["analyze_onnx", "convert_model", "from_onnx", "identify", "read_model", "to_network"]
