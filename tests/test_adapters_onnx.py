"""ONNX adapter: operator coverage against onnxruntime, torch round trips, errors, CLI."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import lipcert
from lipcert.adapters.onnx import analyze_onnx, from_onnx, identify
from lipcert.cli import main
from lipcert.errors import ModelLoadError, UnsupportedOperatorError

FLOAT = TensorProto.FLOAT


# --------------------------------------------------------------------------- helpers
def make_model(nodes: list[onnx.NodeProto], in_shape: list[int | str], out_name: str, inits: dict[str, np.ndarray],
               opset: int = 13) -> onnx.ModelProto:
    """A one-input, one-output float32 model (initializers given as numpy arrays)."""
    graph = helper.make_graph(
        nodes, "test", [helper.make_tensor_value_info("x", FLOAT, in_shape)],
        [helper.make_tensor_value_info(out_name, FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model)
    model.graph.output[0].type.tensor_type.shape.SetInParent()  # the checker wants a shape field
    return model


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"x": x.astype(np.float32)})[0])


def f32(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def assert_matches_ort(model: onnx.ModelProto, rng: np.random.Generator, batch: bool = True, **options: object
                       ) -> lipcert.Network:
    """Load the model and compare the Network with onnxruntime on fresh random inputs."""
    net = from_onnx(model, **options)  # type: ignore[arg-type]
    xs = rng.standard_normal((5, *net.input_shape))
    if batch:
        expected = ort_run(model, xs).reshape(5, -1)
    else:
        sample = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        expected = np.stack([ort_run(model, x.reshape(sample)).reshape(-1) for x in xs])
    got = net(xs)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(expected).max()))
    return net


def node(op: str, inputs: list[str], outputs: list[str], **attrs: object) -> onnx.NodeProto:
    return helper.make_node(op, inputs, outputs, name=f"{op}_{outputs[0]}", **attrs)


# --------------------------------------------------------------------------- operators vs onnxruntime
def test_gemm_transposes_alpha_beta(rng: np.random.Generator) -> None:
    # the whole (4, 1) input is one sample (fixed first axis > 1), A^T B^T with alpha and beta
    inits = {"B": f32(rng, 3, 4), "C": f32(rng, 3), "W2": f32(rng, 2, 3)}
    nodes = [node("Gemm", ["x", "B", "C"], ["g"], transA=1, transB=1, alpha=0.5, beta=2.0),
             node("Relu", ["g"], ["r"]), node("Gemm", ["r", "W2"], ["y"], transB=1)]
    net = assert_matches_ort(make_model(nodes, [4, 1], "y", inits), rng, batch=False)
    assert net.input_shape == (4, 1)
    assert net.widths == (4, 3, 2)


def test_matmul_add_and_constant_first_sub(rng: np.random.Generator) -> None:
    inits = {"W": f32(rng, 5, 4), "b": f32(rng, 4), "c": f32(rng, 1), "W2": f32(rng, 4, 2)}
    nodes = [node("MatMul", ["x", "W"], ["m"]), node("Add", ["b", "m"], ["a"]), node("Sub", ["c", "a"], ["s"]),
             node("Tanh", ["s"], ["t"]), node("MatMul", ["t", "W2"], ["y"])]
    net = assert_matches_ort(make_model(nodes, ["N", 5], "y", inits), rng)
    assert net.activation_names == ("tanh",)


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_unsqueeze_axes_as_attribute_or_input(rng: np.random.Generator, opset: int) -> None:
    inits = {"W": f32(rng, 6, 4), "W2": f32(rng, 3, 4)}
    if opset >= 13:
        inits["ax1"] = np.array([1], dtype=np.int64)
        nodes = [node("Squeeze", ["x", "ax1"], ["s"]), node("Gemm", ["s", "W"], ["g"]),
                 node("Unsqueeze", ["g", "ax1"], ["u"])]
    else:
        nodes = [node("Squeeze", ["x"], ["s"], axes=[1]), node("Gemm", ["s", "W"], ["g"]),
                 node("Unsqueeze", ["g"], ["u"], axes=[1])]
    nodes += [node("Relu", ["u"], ["r"]), node("Flatten", ["r"], ["f"]), node("Gemm", ["f", "W2"], ["y"], transB=1)]
    net = assert_matches_ort(make_model(nodes, ["N", 1, 6], "y", inits, opset), rng)
    assert net.widths == (6, 4, 3)


def test_nhwc_input_with_transpose_and_per_channel_normalization(rng: np.random.Generator) -> None:
    mean, std = np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.25, 0.3])
    inits = {"K": f32(rng, 4, 3, 3, 3), "W": f32(rng, 2, 4 * 3 * 3)}
    nodes = [node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             node("Conv", ["t", "K"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
             node("Relu", ["c"], ["r"]), node("Flatten", ["r"], ["f"]), node("Gemm", ["f", "W"], ["y"], transB=1)]
    model = make_model(nodes, ["N", 6, 6, 3], "y", inits)
    net = from_onnx(model, mean=mean, std=std)
    assert net.info["channels_last"] is True
    assert net.input_range == (0.0, 1.0)
    assert "before the normalization" in net.info["input_space"]
    x = rng.uniform(0, 1, (4, 6, 6, 3))
    expected = ort_run(model, (x - mean) / std)  # channels are the last axis of an NHWC input
    np.testing.assert_allclose(net(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opset,mode", [(9, "constant"), (13, "constant"), (13, "reflect"), (13, "edge"),
                                        (19, "wrap")])
def test_pad_modes(rng: np.random.Generator, opset: int, mode: str) -> None:
    pads = [0, 0, 1, 2, 0, 0, 2, 1]
    inits = {"K": f32(rng, 2, 2, 3, 3), "W": f32(rng, 2 * 6 * 6, 3)}
    if opset < 11:
        pad = node("Pad", ["x"], ["p"], pads=pads, value=0.5, mode=mode)
    else:
        inits["pads"] = np.array(pads, dtype=np.int64)
        inits["v"] = np.array(0.5, dtype=np.float32)
        pad = node("Pad", ["x", "pads", "v"] if mode == "constant" else ["x", "pads"], ["p"], mode=mode)
    nodes = [pad, node("Conv", ["p", "K"], ["c"]), node("Elu", ["c"], ["e"], alpha=0.5), node("Flatten", ["e"], ["f"]),
             node("MatMul", ["f", "W"], ["y"])]
    assert_matches_ort(make_model(nodes, ["N", 2, 5, 5], "y", inits, opset), rng)


@pytest.mark.parametrize("opset,bounds,expected", [(9, (0.0, 6.0), "relu6"), (13, (-1.0, 2.0), "hardtanh(-1,2)"),
                                                   (13, (0.0, None), "relu")])
def test_clip_as_activation(rng: np.random.Generator, opset: int, bounds: tuple[float, float | None],
                            expected: str) -> None:
    inits = {"W": f32(rng, 5, 4) * 3, "W2": f32(rng, 4, 2)}
    lo, hi = bounds
    if opset < 11:
        clip = node("Clip", ["g"], ["c"], min=lo, max=hi)
    else:
        inits["lo"] = np.array(lo, dtype=np.float32)
        ins = ["g", "lo"]
        if hi is not None:
            inits["hi"] = np.array(hi, dtype=np.float32)
            ins.append("hi")
        clip = node("Clip", ins, ["c"])
    nodes = [node("MatMul", ["x", "W"], ["g"]), clip, node("MatMul", ["c", "W2"], ["y"])]
    net = assert_matches_ort(make_model(nodes, ["N", 5], "y", inits, opset), rng)
    assert net.activation_names == (expected,)
    assert (float(net.alphas[0][0]), float(net.betas[0][0])) == (0.0, 1.0)


@pytest.mark.parametrize("opset", [13, 18])
def test_pooling_reduce_and_batchnorm(rng: np.random.Generator, opset: int) -> None:
    inits = {"K": f32(rng, 4, 2, 3, 3), "s": rng.uniform(0.5, 2, 4).astype(np.float32), "b": f32(rng, 4),
             "m": f32(rng, 4), "v": rng.uniform(0.5, 2, 4).astype(np.float32), "W": f32(rng, 3, 4)}
    if opset >= 18:
        inits["axes"] = np.array([3], dtype=np.int64)
        reduce = node("ReduceMean", ["gp", "axes"], ["rm"], keepdims=0)
    else:
        reduce = node("ReduceMean", ["gp"], ["rm"], axes=[3], keepdims=0)
    nodes = [node("Conv", ["x", "K"], ["c"], pads=[1, 1, 1, 1]),
             node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"], epsilon=1e-3),
             node("Softplus", ["bn"], ["sp"]),
             node("AveragePool", ["sp"], ["ap"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                  count_include_pad=0),
             node("Sigmoid", ["ap"], ["sg"]),
             node("GlobalAveragePool", ["sg"], ["gp"]), reduce,
             node("Flatten", ["rm"], ["f"]), node("Gemm", ["f", "W"], ["y"], transB=1)]
    net = assert_matches_ort(make_model(nodes, ["N", 2, 7, 7], "y", inits, opset), rng)
    assert net.activation_names == ("softplus", "sigmoid")


def test_conv_transpose_with_pads_output_padding_dilation_groups(rng: np.random.Generator) -> None:
    inits = {"K": f32(rng, 4, 3, 3, 2), "B": f32(rng, 6), "W": f32(rng, 2, 6 * 11 * 7)}
    nodes = [node("ConvTranspose", ["x", "K", "B"], ["ct"], strides=[2, 1], pads=[1, 0, 0, 1], output_padding=[1, 0],
                  dilations=[1, 2], group=2),
             node("LeakyRelu", ["ct"], ["l"], alpha=0.1), node("Flatten", ["l"], ["f"]),
             node("Gemm", ["f", "W"], ["y"], transB=1)]
    assert_matches_ort(make_model(nodes, ["N", 4, 5, 6], "y", inits), rng)


def test_selection_and_shape_operators(rng: np.random.Generator) -> None:
    inits = {"starts": np.array([1, 0], dtype=np.int64), "ends": np.array([4, 100], dtype=np.int64),
             "axes": np.array([1, 2], dtype=np.int64), "steps": np.array([2, 1], dtype=np.int64),
             "idx": np.array([3, 0, -1], dtype=np.int64), "shape": np.array([0, -1], np.int64),
             "W": f32(rng, 12, 4), "neg": np.array([2.0], dtype=np.float32)}
    nodes = [node("Slice", ["x", "starts", "ends", "axes", "steps"], ["sl"]),  # (N, 2, 4)
             node("Gather", ["sl", "idx"], ["ga"], axis=2),  # (N, 2, 3)
             node("Identity", ["ga"], ["cc"]),
             node("Dropout", ["cc"], ["dr"]), node("Cast", ["dr"], ["ca"], to=FLOAT),
             node("Neg", ["ca"], ["ng"]), node("Div", ["ng", "neg"], ["dv"]),
             node("Reshape", ["dv", "shape"], ["rs"]),  # (N, 6)
             node("Selu", ["rs"], ["se"]),
             node("Tile", ["se", "two"], ["ti"]),  # (N, 12)
             node("MatMul", ["ti", "W"], ["y"])]
    inits["two"] = np.array([1, 2], dtype=np.int64)
    net = assert_matches_ort(make_model(nodes, ["N", 5, 4], "y", inits), rng)
    assert net.activation_names == ("elu(1.67326)",)


def test_concat_with_constant_and_expand(rng: np.random.Generator) -> None:
    inits = {"k": f32(rng, 1, 2), "shape": np.array([3, 1], dtype=np.int64), "W": f32(rng, 15, 2)}
    nodes = [node("Concat", ["x", "k"], ["cc"], axis=1),  # (1, 5)
             node("HardSigmoid", ["cc"], ["hs"], alpha=0.3, beta=0.4),
             node("Expand", ["hs", "shape"], ["ex"]),  # (3, 5)
             node("Flatten", ["ex"], ["f"], axis=0),  # (1, 15)
             node("MatMul", ["f", "W"], ["y"])]
    assert_matches_ort(make_model(nodes, [1, 3], "y", inits), rng, batch=False)


def test_prelu_with_one_slope_and_gelu_opset20(rng: np.random.Generator) -> None:
    inits = {"W": f32(rng, 5, 4), "a": np.array([0.25], dtype=np.float32), "W2": f32(rng, 4, 3)}
    nodes = [node("MatMul", ["x", "W"], ["m"]), node("PRelu", ["m", "a"], ["p"]), node("MatMul", ["p", "W2"], ["m2"]),
             node("Gelu", ["m2"], ["y"], approximate="tanh")]
    net = assert_matches_ort(make_model(nodes, ["N", 5], "y", inits, 20), rng)
    assert net.activation_names == ("leaky_relu(0.25)", "gelu_tanh")
    assert net.depth == 3  # the final activation gets an identity output layer


def test_opset_21_graph(rng: np.random.Generator) -> None:
    inits = {"W": f32(rng, 3, 5), "b": f32(rng, 3), "W2": f32(rng, 2, 3)}
    nodes = [node("Gemm", ["x", "W", "b"], ["g"], transB=1), node("Relu", ["g"], ["r"]),
             node("Gemm", ["r", "W2"], ["y"], transB=1)]
    net = assert_matches_ort(make_model(nodes, ["N", 5], "y", inits, 21), rng)
    np.testing.assert_array_equal(net.weights[0].numpy(), inits["W"].astype(np.float64))


def test_fused_elementwise_subgraph_is_identified() -> None:
    z = torch.linspace(-5, 5, 101, dtype=torch.float64)
    act, a, d = identify(z, 3 * torch.nn.functional.silu(z) + 1)  # type: ignore[misc]
    assert (act.name, a, d) == ("silu", 3.0, 1.0)
    assert identify(z, z**2) is None


def test_square_is_not_fused_and_reports_the_product(rng: np.random.Generator) -> None:
    nodes = [node("Mul", ["x", "x"], ["y"])]
    with pytest.raises(UnsupportedOperatorError, match="Mul node 'Mul_y': it multiplies two tensors"):
        from_onnx(make_model(nodes, ["N", 3], "y", {}))


# --------------------------------------------------------------------------- torch -> ONNX -> Network
class Normalize(nn.Module):
    """Input normalization written as arithmetic in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.2, 0.3, 0.25]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = Normalize()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4)
        self.pool = nn.AvgPool2d(2)
        self.up = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
        self.gap = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(4 * 2 * 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.c1(self.norm(x))))
        x = torch.nn.functional.silu(self.c2(x))
        x = torch.tanh(self.up(self.pool(x)))
        x = self.gap(x)
        return self.fc(x.view(x.size(0), -1))


def _randomize_bn(model: nn.Module, gen: torch.Generator) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-1, 1, generator=gen)
                m.running_var.uniform_(0.5, 2, generator=gen)
                m.weight.uniform_(0.5, 2, generator=gen)
                m.bias.uniform_(-1, 1, generator=gen)
    return model.eval()


def export(model: nn.Module, shape: tuple[int, ...], opset: int) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.rand(2, *shape), buf, dynamo=False, opset_version=opset, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    return onnx.load_from_string(buf.getvalue())


ACTIVATIONS = [nn.ReLU(), nn.LeakyReLU(0.1), nn.ELU(), nn.Softplus(), nn.Tanh(), nn.Sigmoid(), nn.SiLU(), nn.GELU(),
               nn.GELU("tanh"), nn.Hardtanh(-0.5, 2.0), nn.ReLU6()]


def round_trip_models(gen: torch.Generator) -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    layers: list[nn.Module] = [nn.Flatten()]
    for act in ACTIVATIONS:
        layers += [nn.Linear(12 if len(layers) == 1 else 16, 16), act]
    layers += [nn.Dropout(0.3), nn.Linear(16, 4)]
    conv1d = nn.Sequential(nn.Conv1d(2, 4, 3, stride=2, padding=2, dilation=2), nn.BatchNorm1d(4), nn.Sigmoid(),
                           nn.Flatten(), nn.Linear(4 * 5, 3))
    return {"mlp": (_randomize_bn(nn.Sequential(*layers), gen), (3, 4)),
            "cnn": (_randomize_bn(SmallCNN(), gen), (3, 12, 12)),
            "conv1d": (_randomize_bn(conv1d, gen), (2, 9))}


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("name", ["mlp", "cnn", "conv1d"])
def test_torch_and_onnx_give_the_same_network(name: str, opset: int) -> None:
    gen = torch.Generator().manual_seed(7)
    model, shape = round_trip_models(gen)[name]
    direct = lipcert.load(model, input_shape=shape, dense=True)  # the dense matrices are compared
    via_onnx = from_onnx(export(model, shape, opset), dense=True)
    assert via_onnx.widths == direct.widths
    assert via_onnx.activation_names == direct.activation_names
    for a, b in zip(direct.weights + direct.biases, via_onnx.weights + via_onnx.biases):
        # the exporter folds BatchNorm into the convolution in float32
        assert float((a - b).abs().max()) <= 1e-6 * max(1.0, float(a.abs().max()))
    assert via_onnx.info["conversion_error"] < 1e-4


# --------------------------------------------------------------------------- unsupported models, errors
def test_every_unsupported_node_is_named(tmp_path: Path, rng: np.random.Generator) -> None:
    inits = {"W": f32(rng, 4, 4), "W2": f32(rng, 4, 4)}
    nodes = [node("LpPool", ["x"], ["mp"], kernel_shape=[2]),  # (N, 1, 8) -> (N, 1, 7)
             node("Flatten", ["mp"], ["f"]), node("Slice", ["f", "s0", "s4", "ax"], ["sl"]),
             node("Gemm", ["sl", "W"], ["g"], transB=1), node("Relu", ["g"], ["r"]),
             node("Add", ["r", "sl"], ["res"]),  # a residual connection: supported (adapters/residual.py)
             node("Gemm", ["res", "W2"], ["g2"], transB=1),
             node("Concat", ["g2", "res", "g2"], ["cat"], axis=1),  # concat of three branches
             node("Softmax", ["cat"], ["y"])]
    inits.update({"s0": np.array([0], np.int64), "s4": np.array([4], np.int64), "ax": np.array([1], np.int64)})
    model = make_model(nodes, ["N", 1, 8], "y", inits)
    conv = analyze_onnx(model)
    assert [(i.op_type, i.name) for i in conv.issues] == [
        ("LpPool", "LpPool_mp"), ("Concat", "Concat_cat"), ("Softmax", "Softmax_y")]
    with pytest.raises(UnsupportedOperatorError, match=r"(?s)3 operators.*LpPool node 'LpPool_mp': this pooling"
                                                       r"(.|\n)*more than two tensors"):
        from_onnx(model)
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    assert main(["inspect", str(path)]) == 2


def test_data_dependent_gather(rng: np.random.Generator) -> None:
    inits = {"table": f32(rng, 10, 3)}
    nodes = [node("Cast", ["x"], ["i"], to=TensorProto.INT64), node("Gather", ["table", "i"], ["y"])]
    conv = analyze_onnx(make_model(nodes, ["N", 2], "y", inits))
    assert [i.op_type for i in conv.issues] == ["Cast", "Gather"]
    assert "data-dependent indexing" in conv.issues[1].why


def test_corrupt_and_truncated_files(tmp_path: Path, rng: np.random.Generator) -> None:
    inits = {"W": f32(rng, 3, 5)}
    model = make_model([node("Gemm", ["x", "W"], ["y"], transB=1)], ["N", 5], "y", inits)
    data = model.SerializeToString()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated.onnx is not a valid ONNX file.*truncated or corrupt"):
        lipcert.load(truncated)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xffnot a model" * 20)
    with pytest.raises(ModelLoadError, match="not a valid ONNX"):
        lipcert.load(garbage)
    broken = make_model([node("Gemm", ["x", "missing"], ["y"], transB=1)], ["N", 5], "y", {})
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        from_onnx(broken)
    with pytest.raises(ModelLoadError, match="no such model file"):
        lipcert.load(tmp_path / "absent.onnx")


def test_dense_size_limit_is_checked_before_building(rng: np.random.Generator) -> None:
    model = make_model([node("Gemm", ["x", "W"], ["y"], transB=1)], ["N", 50], "y", {"W": f32(rng, 40, 50)})
    with pytest.raises(ModelLoadError, match=r"about 1.6e-05 GB.*over the limit of 1e-05 GB.*max_dense_bytes="):
        from_onnx(model, max_dense_bytes=10_000)
    assert from_onnx(model, max_dense_bytes=16_000).widths == (50, 40)


def test_symbolic_input_dimensions_need_input_shape(rng: np.random.Generator) -> None:
    model = make_model([node("Flatten", ["x"], ["f"]), node("Gemm", ["f", "W"], ["y"], transB=1)],
                       ["N", "C", 4], "y", {"W": f32(rng, 2, 12)})
    with pytest.raises(ModelLoadError, match="symbolic dimensions.*input_shape"):
        from_onnx(model)
    assert from_onnx(model, input_shape=(3, 4)).input_shape == (3, 4)


def test_cli_bound_and_inspect_on_onnx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4))
    mlp_path = tmp_path / "mlp.onnx"
    onnx.save(export(mlp.eval(), (3, 4), 13), str(mlp_path))
    assert main(["bound", str(mlp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"bounds", "lower_bound", "seconds"}
    bounds = out["bounds"]
    assert bounds["naive"] >= bounds["eclipse-fast"] >= bounds["combined"] >= out["lower_bound"] > 0
    assert main(["bound", str(mlp_path), "--method", "naive,combined", "--no-lower"]) == 0
    assert "combined" in capsys.readouterr().out
    model, shape = round_trip_models(gen)["cnn"]
    path = tmp_path / "cnn.onnx"
    onnx.save(export(model, shape, 13), str(path))
    assert main(["inspect", str(path), "--json", "--mean", "0.5", "--std", "0.25"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [layer["op_type"] for layer in report["layers"]][:2] == ["Sub", "Div"]
    assert report["network"]["conversion_error"] < 1e-4
    assert report["network"]["input_range"] == [0.0, 1.0]
    assert report["dense"][0]["rows"] == 8 * 6 * 6 and report["dense"][0]["cols"] == 3 * 12 * 12
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "silu [-0.0998393, 1.09984]" in text and "dense matrices" in text
