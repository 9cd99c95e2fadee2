"""Strided, grouped, dilated and valid-padded conv chains per frequency, and lipschitz() on operator networks.

The aliasing identity behind strided layers (docs/decisions.md 32) is checked on explicit DFT matrices;
random chains (seeded by the test's printed seed) and the shared CNN-A / ConvSmall checkpoints are bounded
per frequency and compared with the dense path, naive and the rigorous lower bounds.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from lipcert import reference_models
from lipcert.bounds import conv_closed_form, conv_grid
from lipcert.bounds.closed_form import closed_form_slopes
from lipcert.bounds.lower import lower_bound
from lipcert.bounds.matrix_free import naive
from lipcert.bounds.methods import lipschitz
from lipcert.bounds.recursion import replay
from lipcert.bounds.workspace import per_frequency_bytes
from lipcert.errors import InvalidArgumentError
from lipcert.memory import PeakMemory
from lipcert.network import Network
from lipcert.operators import Conv2dOperator

# Relative tolerance between the per-frequency and the dense code paths: the same eigenvalue chain summed in
# another order agrees to ~1e-9 (2.4e-9 the worst over 200 seeds of "dilation and groups"); a wrong symbol or
# alias moves the value by more than 1e-3.
PATHS = 1e-7

# (C_out, kernel, stride, padding, dilation, groups) per conv, then the input shape
GEOMETRIES = {
    "stride 2": ([(4, 3, 2, 1, 1, 1), (6, 3, 1, 1, 1, 2)], (2, 8, 8)),
    "two strides, 4x4 kernels": ([(4, 4, 2, 1, 1, 1), (6, 4, 2, 1, 1, 1)], (1, 8, 12)),
    "dilation and groups": ([(4, 3, 1, 2, 2, 2), (4, 3, 2, 1, 1, 4)], (2, 8, 8)),
    "no padding (valid)": ([(4, 3, 1, 0, 1, 1), (5, 3, 2, 0, 1, 1)], (2, 9, 9)),
}


def _chain(seed: int, specs: list[tuple[int, ...]], shape: tuple[int, int, int], circular: bool,
           tail: tuple[int, ...] = (7, 3)) -> Network:
    gen = torch.Generator().manual_seed(seed)
    ops, (c, h, w) = [], shape
    for co, k, s, p, d, g in specs:
        kernel = torch.randn(co, c // g, k, k, generator=gen, dtype=torch.float64) / math.sqrt(k * k * c / g)
        ops.append(Conv2dOperator.conv(kernel, (c, h, w), stride=s, padding=p, dilation=d, groups=g,
                                       circular=circular and p > 0))
        c, h, w = ops[-1].output_shape
    sizes = [ops[-1].shape[0], *tail]
    dense = [torch.randn(b, a, generator=gen, dtype=torch.float64) / math.sqrt(a) for a, b in itertools.pairwise(sizes)]
    biases = [torch.randn(x.shape[0], generator=gen, dtype=torch.float64) * 0.1 for x in [*ops, *dense]]
    return Network.from_weights([*ops, *dense], biases, "relu", input_shape=shape)


def _dft(n: int, sign: int = 1) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float64)
    return torch.polar(torch.ones(n, n, dtype=torch.float64), sign * 2 * math.pi * torch.outer(i, i) / n) / math.sqrt(n)


def test_a_strided_circular_conv_aliases_the_frequencies_of_its_input_grid(seed: int) -> None:
    """U_out^H (S C) U_in [v, w] = K(w) / sqrt(s) when w = v mod N / s, else 0 (one axis at a time, 2-D op)."""
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(3, 2, 3, 3, generator=gen, dtype=torch.float64)
    op = Conv2dOperator.conv(k, (2, 8, 6), stride=(2, 3), padding=1, circular=True)
    layer = conv_grid.plan_chain(Network.from_weights(
        [op, torch.randn(2, op.shape[0], generator=gen, dtype=torch.float64)], None, "relu",
        input_shape=(2, 8, 6))).layers[0]
    u_in = torch.kron(torch.eye(2, dtype=torch.complex128), torch.kron(_dft(8), _dft(6)))
    u_out = torch.kron(torch.eye(3, dtype=torch.complex128), torch.kron(_dft(4), _dft(2)))
    hat = (u_out.mH @ op.dense().to(torch.complex128) @ u_in).reshape(3, 4, 2, 2, 8, 6)
    full = torch.einsum("ocab,ha,wb->hwoc", k.to(torch.complex128),
                        torch.polar(torch.ones(8, 3, dtype=torch.float64), 2 * math.pi * torch.outer(
                            torch.arange(8.0, dtype=torch.float64), torch.arange(3.0, dtype=torch.float64) - 1) / 8),
                        torch.polar(torch.ones(6, 3, dtype=torch.float64), 2 * math.pi * torch.outer(
                            torch.arange(6.0, dtype=torch.float64), torch.arange(3.0, dtype=torch.float64) - 1) / 6))
    for v_h, v_w, w_h, w_w in itertools.product(range(4), range(2), range(8), range(6)):
        want = full[w_h, w_w] / math.sqrt(6) if (w_h % 4, w_w % 2) == (v_h, v_w) else torch.zeros(3, 2)
        torch.testing.assert_close(hat[:, v_h, v_w, :, w_h, w_w], want.to(torch.complex128), atol=1e-12, rtol=0)
    # the stored half spectrum: every alias maps to a stored frequency or to the conjugate of one
    sym = layer.symbol().reshape(8, 4, 3, 2)
    index, conj = conv_grid.alias_index((8, 6), (2, 3))
    for v, (idx, cj) in enumerate(zip(index.tolist(), conj.tolist())):
        v_h, v_w = divmod(v, 2)
        aliases = [(v_h + 4 * m_h, v_w + 2 * m_w) for m_h in range(2) for m_w in range(3)]
        for (w_h, w_w), i, c in zip(aliases, idx, cj):
            stored = sym[i // 4, i % 4]
            torch.testing.assert_close(stored.conj() if c else stored, full[w_h, w_w], atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_circular_strided_chains_equal_dense_eclipse_fast(seed: int, name: str) -> None:
    specs, shape = GEOMETRIES[name]
    net = _chain(seed, specs, shape, circular=True)
    plan = conv_grid.plan_chain(net)
    ours = conv_closed_form.eclipse_fast(net)
    dense_net = net.densified()
    dense = lipschitz(dense_net, "eclipse-fast")
    if plan.exact:  # grids the strides divide, outputs filling them: the dense pass itself
        assert abs(ours.value - dense.value) <= PATHS * dense.value
    else:  # valid padding leaves positions of the grid unread: a restriction (decisions 27)
        assert dense.value <= ours.value * (1 + PATHS)
    again = replay(list(dense_net.weights), closed_form_slopes(dense_net.slopes()), ours.multipliers, ours.labels)
    assert again.value <= ours.value * (1 + PATHS)
    assert float(lower_bound(dense_net, restarts=2, samples=32, seed=seed % 2**31, seconds=2)) <= ours.value


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_zero_padded_chains_lie_between_the_dense_certificate_and_naive(seed: int, name: str) -> None:
    """lipschitz() per frequency: >= the lower bounds and dense ECLipsE-Fast, <= naive (the min with it)."""
    specs, shape = GEOMETRIES[name]
    net = _chain(seed, specs, shape, circular=False)
    dense_net = net.densified()
    lower = float(lower_bound(dense_net, restarts=2, samples=32, seed=seed % 2**31, seconds=2))
    free_naive = naive(net).value
    for method in ("eclipse-fast", "gc", "shift", "combined"):
        bound = lipschitz(net, method, path="matrix-free")
        assert bound.extras["path"] == ("matrix-free naive" if bound.rule == "naive" else "per-frequency")
        assert "naive" in bound.per_rule and lower <= bound.value <= free_naive * (1 + PATHS)
        assert bound.network == net.fingerprint()
        if method == "eclipse-fast":
            assert lipschitz(dense_net, method).value <= bound.per_rule["sn(1)"] * (1 + PATHS)
    ours = conv_closed_form.eclipse_fast(net)  # its multipliers, restricted to the real positions, certify the net
    again = replay(list(dense_net.weights), closed_form_slopes(dense_net.slopes()), ours.multipliers, ours.labels)
    assert lower <= again.value <= ours.value * (1 + PATHS)
    circ_net = _chain(seed, specs, shape, circular=True)
    circular = lipschitz(circ_net, "eclipse-fast", path="matrix-free")  # naive runs beside the rule only on restricted grids
    assert ("naive" in circular.per_rule) == (not conv_grid.plan_chain(circ_net).exact)


@pytest.mark.parametrize("circular", [True, False])
def test_a_stride_1_conv_transpose_is_the_adjoint_circular_conv(seed: int, circular: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    up = Conv2dOperator.conv(torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64) / 5, (3, 6, 8),
                             padding=(1, 1, 2, 0), circular=circular, adjoint=True)  # (4, 6, 8) -> (3, 6, 8)
    down = Conv2dOperator.conv(torch.randn(5, 3, 3, 3, generator=gen, dtype=torch.float64) / 5, up.output_shape,
                               padding=1, stride=2, circular=circular)
    net = Network.from_weights([up, down, torch.randn(3, down.shape[0], generator=gen, dtype=torch.float64) / 10],
                               None, "relu", input_shape=up.input_shape)
    ours = conv_closed_form.eclipse_fast(net)
    dense_net = net.densified()
    dense = lipschitz(dense_net, "eclipse-fast").value
    again = replay(list(dense_net.weights), closed_form_slopes(dense_net.slopes()), ours.multipliers, ours.labels)
    if circular:
        assert abs(ours.value - dense) <= PATHS * dense and abs(again.value - dense) <= PATHS * dense
    else:
        assert dense <= ours.value * (1 + PATHS) and again.value <= ours.value * (1 + PATHS)


def test_methods_without_a_frequency_form_run_dense_and_say_why(seed: int) -> None:
    net = _chain(seed, *GEOMETRIES["stride 2"], circular=True)
    assert lipschitz(net, "greedy").extras["path"] == "dense"  # the dense estimate fits the default budget
    with pytest.raises(InvalidArgumentError, match="no matrix-free path: greedy has no per-frequency form"):
        lipschitz(net, "greedy", path="matrix-free")
    leaky = Network.from_weights(list(net.operators[:2]) + list(net.weights[2:]), None, "leaky_relu",
                                 input_shape=net.input_shape)
    fast = lipschitz(leaky, "eclipse-fast", path="matrix-free")  # leaky ReLU relaxes to [0, 1]: per frequency
    assert fast.extras["path"] == "per-frequency"
    silu = Network.from_weights(list(net.operators[:2]) + list(net.weights[2:]), None, "silu",
                                input_shape=net.input_shape)
    assert lipschitz(silu, "eclipse-fast").extras["path"] == "dense"
    with pytest.raises(InvalidArgumentError, match="slopes in \\[0, 1\\]"):
        lipschitz(silu, "eclipse-fast", path="matrix-free")


def test_the_memory_estimate_covers_the_measured_peak(seed: int) -> None:
    net = _chain(seed, [(16, 3, 1, 1, 1, 1), (32, 4, 2, 1, 1, 1), (32, 3, 1, 1, 1, 1)], (3, 32, 32), circular=False,
                 tail=(64, 10))
    estimate = per_frequency_bytes(net, "eclipse-fast", {})
    with PeakMemory() as peak:
        conv_closed_form.certificates(net, "eclipse-fast", {})
    print(f"estimate {estimate / 1e6:.1f} MB, measured increase {peak.peak_bytes / 1e6:.1f} MB")
    assert peak.peak_bytes <= estimate


def _checkpoint(shared_data: Path, file: str) -> Network:
    """The model as an operator network: .pth through its reference architecture; the OVAL21 base_kw ONNX
    (conv 3->8, 8->16, 4x4 stride 2 padding 1, then 1024-100-10) rebuilt from its initializers, without the
    input normalization (bounds in the normalized input space)."""
    from lipcert.adapters.graph import build_network
    from lipcert.adapters.torch import analyze_module

    if file.endswith(".onnx"):
        onnx = pytest.importorskip("onnx")
        params = {t.name: torch.from_numpy(onnx.numpy_helper.to_array(t).copy())
                  for t in onnx.load(str(shared_data / "models" / file)).graph.initializer}
        module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 4, 2, 1),
                                     torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(1024, 100), torch.nn.ReLU(),
                                     torch.nn.Linear(100, 10)).double()
        module.load_state_dict({k: v.double() for k, v in params.items()})
        shape: tuple[int, ...] = (3, 32, 32)
    else:
        module = reference_models.load_checkpoint(shared_data / "models" / file).double()
        shape = reference_models.CHECKPOINTS[Path(file).name].input_shape
    return build_network(analyze_module(module.eval(), input_shape=shape), operators=True)


@pytest.mark.parametrize("file", ["mnist_cnn_a_adv/mnist_a_adv.pth",
                                  "eran_cifar_conv_small_pgd/cifar_conv_small_pgd.pth",
                                  "oval21_cifar_base_kw/cifar_base_kw.onnx"])
def test_shared_conv_checkpoints_per_frequency(shared_data: Path, file: str) -> None:
    """CNN-A (zero padding, stride 2) and ConvSmall (valid, stride 2 on 32 -> 15 -> 6): between the dense
    ECLipsE-Fast and naive, above the lower bound; combined at most ECLipsE-Fast."""
    net = _checkpoint(shared_data, file)
    fast, comb = lipschitz(net, "eclipse-fast", path="matrix-free"), lipschitz(net, "combined", path="matrix-free")
    assert fast.extras["path"] == "per-frequency" and comb.value <= fast.value
    dense_net = net.densified()
    dense = lipschitz(dense_net, "eclipse-fast")
    lower = float(lower_bound(dense_net, restarts=1, samples=16, seconds=2))
    print(f"{file}: lower {lower:.4f}, combined {comb.value:.4f}, dense ECLipsE-Fast {dense.value:.4f}, "
          f"per-frequency ECLipsE-Fast {fast.value:.4f}, naive {fast.per_rule['naive']:.4f}")
    assert lower <= comb.value and dense.value <= fast.per_rule["sn(1)"] * (1 + PATHS)
    assert fast.value <= fast.per_rule["naive"]
    # the winner's multipliers replayed on the dense net certify at most as much (one model: a dense pass each)
    if file.endswith(".onnx") and comb.rule != "naive":
        again = replay(list(dense_net.weights), closed_form_slopes(dense_net.slopes()), list(comb.multipliers),
                       list(comb.extras["layer_rules"]))
        assert lower <= again.value <= comb.value * (1 + PATHS)


def test_the_symbol_and_tail_dft_rounding_bounds_hold_against_extended_precision(seed: int) -> None:
    """||fl(K(w)) - K(w)|| <= the symbol's epsilon and ||fl(V^) - V^||_F <= the DFT's bound (decisions 33), with the
    exact values taken in numpy's extended precision (64-bit mantissa on x86)."""
    np = pytest.importorskip("numpy")
    if np.finfo(np.longdouble).nmant < 60:
        pytest.skip("numpy's longdouble is no wider than float64 here")
    gen = torch.Generator().manual_seed(seed)
    kernel = torch.randn(5, 3, 3, 4, generator=gen, dtype=torch.float64) * 10
    op = Conv2dOperator.conv(kernel, (3, 9, 10), stride=(1, 2), padding=(1, 1, 2, 1), dilation=(2, 1))
    layer = conv_grid._grid_layer(op, (12, 14))
    ours = layer.symbol().numpy()
    _, eps_k = layer.symbol_bounds()
    k = kernel.numpy().astype(np.longdouble)
    two_pi = np.longdouble(2) * np.arccos(np.longdouble(-1))

    def phases(n: int, count: int, offsets: tuple[int, ...], sign: int):  # type: ignore[no-untyped-def]
        r = np.mod(np.outer(np.arange(count), np.array(offsets)), n).astype(np.longdouble)
        return np.cos(two_pi * r / n) + sign * 1j * np.sin(two_pi * r / n)

    exact = np.einsum("ocab,ha,wb->hwoc", k, phases(12, 12, layer.offsets[0], 1),
                      phases(14, 8, layer.offsets[1], 1)).reshape(ours.shape)
    errors = np.linalg.norm((ours - exact).astype(np.complex128), ord=2, axis=(1, 2))
    assert 0 < errors.max() <= eps_k
    v = torch.randn(4, 5 * 9 * 10, generator=gen, dtype=torch.float64) * 3
    hat, eps_v = conv_grid.tail_dft(v, (9, 10), (12, 14))
    x = v.numpy().astype(np.longdouble).reshape(4, 5, 9, 10)
    want = np.einsum("ncab,ha,wb->hwcn", x, phases(12, 12, tuple(range(9)), -1) / np.sqrt(np.longdouble(12)),
                     phases(14, 8, tuple(range(10)), -1) / np.sqrt(np.longdouble(14))).reshape(hat.shape)
    assert 0 < float(np.linalg.norm((hat.numpy() - want).astype(np.complex128))) <= eps_v
    print(f"symbol error {errors.max():.3g} <= {eps_k:.3g}; DFT error <= {eps_v:.3g}")


def test_a_dense_fallback_that_does_not_fit_says_why_there_was_no_per_frequency_pass(seed: int) -> None:
    from lipcert.errors import MemoryBudgetError

    net = _chain(seed, *GEOMETRIES["stride 2"], circular=True)
    with pytest.raises(MemoryBudgetError, match="greedy has no per-frequency form; without dense matrices lipcert "
                                                "bounds naive and, per frequency, eclipse-fast, sn"):
        lipschitz(net, "greedy", max_bytes=1e6)
    assert lipschitz(net, "eclipse-fast", max_bytes=2e8, path="matrix-free").extras["path"] == "per-frequency"
