"""Residual and Lipschitz layers of deel-torchlip and orthogonium loaded straight from the torch module
(adapters/torch_library.py, adapters/residual.py; docs/decisions.md 38).

Every model is built from the real classes with this test's seed (printed on failure), loaded in float64,
compared with the module's own output, and bounded above its rigorous lower bound.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lipcert
from lipcert.errors import ModelLoadError, UnsupportedOperatorError
from lipcert.graph import GraphNetwork, Residual

torchlip = pytest.importorskip("deel.torchlip")
sll = pytest.importorskip("orthogonium.layers.conv.SLL")
residual = pytest.importorskip("orthogonium.layers.residual")
orthogonium_layers = pytest.importorskip("orthogonium.layers")


class DeelResidual(nn.Module):
    """A block as deel-torchlip users wire LipResidual: res(x, branch(x)) = a x + (1 - a) branch(x)."""

    def __init__(self, width: int, alpha: float) -> None:
        super().__init__()
        self.branch = nn.Sequential(torchlip.SpectralLinear(width, width), torchlip.GroupSort2(),
                                    torchlip.SpectralLinear(width, width))
        self.res = torchlip.LipResidual()
        with torch.no_grad():
            self.res.alpha.fill_(alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res(x, self.branch(x))


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


def _sll_stack(depth: int, width: int, inner: int) -> nn.Sequential:
    return nn.Sequential(*[sll.SDPBasedLipschitzDense(width, width, inner) for _ in range(depth)])


def _load(model: nn.Module, shape: tuple[int, ...]) -> tuple[GraphNetwork, nn.Module]:
    model = model.double().eval()
    net = lipcert.load(model, input_shape=shape)
    assert isinstance(net, GraphNetwork)
    return net, model


def _assert_matches(net: GraphNetwork, model: nn.Module, shape: tuple[int, ...], gen: torch.Generator) -> None:
    x = torch.randn(24, *shape, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x).reshape(24, -1)
    out = torch.as_tensor(net(x.numpy())).reshape(24, -1)
    assert float((out - ref).abs().max()) <= 1e-10 * max(1.0, float(ref.abs().max()))


def _assert_bounded(net: GraphNetwork, seed: int) -> float:
    value = lipcert.lipschitz(net, "combined").value
    low = lipcert.lower_bound(net, restarts=2, samples=16, seed=seed).value
    assert value >= low > 0
    return value


def _models() -> dict[str, tuple[nn.Module, tuple[int, ...], tuple[bool, ...]]]:
    """name -> (model, input shape, identity shortcut of each Residual stage), built in float64: orthogonium's
    parametrizations keep the dtype they were built with, so ``.double()`` breaks OrthoLinear and UnitNormLinear
    (their forward then fails in ``vector_norm``; see test_orthogonium_parametrizations_after_double)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return _draw_models()
    finally:
        torch.set_default_dtype(default)


def _draw_models() -> dict[str, tuple[nn.Module, tuple[int, ...], tuple[bool, ...]]]:
    cat_fn = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 4), nn.Tanh())
    return {
        "deel LipResidual": (nn.Sequential(nn.Linear(6, 8), DeelResidual(8, 0.4), nn.ReLU(), nn.Linear(8, 3)),
                             (6,), (False,)),
        "AdditiveResidual": (nn.Sequential(residual.AdditiveResidual(_mlp(8, 10, 8), init_val=0.3), nn.Linear(8, 3)),
                             (8,), (False,)),
        "PrescaledAdditiveResidual": (nn.Sequential(residual.PrescaledAdditiveResidual(_mlp(8, 10, 8), init_val=0.7),
                                                    nn.Linear(8, 3)), (8,), (False,)),
        "ConcatResidual": (nn.Sequential(nn.Linear(5, 8), residual.ConcatResidual(cat_fn), nn.ReLU(),
                                         nn.Linear(8, 3)), (5,), (False,)),
        "SLL + MaxMin + UnitNormLinear": (nn.Sequential(_sll_stack(2, 8, 12), orthogonium_layers.MaxMin(),
                                                        sll.SDPBasedLipschitzDense(8, 8, 6),
                                                        orthogonium_layers.OrthoLinear(8, 8),
                                                        orthogonium_layers.UnitNormLinear(8, 3)), (8,), (True,) * 3),
        "AOCLipschitzResBlock": (nn.Sequential(sll.AOCLipschitzResBlock(2, 2, 3), nn.ReLU(), nn.Flatten(),
                                               nn.Linear(2 * 4 * 4, 3)), (2, 4, 4), (True,)),
        "SLLxAOCLipschitzResBlock": (nn.Sequential(sll.SLLxAOCLipschitzResBlock(2, 4, 2, 3, stride=2), nn.Flatten(),
                                                   nn.Linear(4 * 3 * 3, 3)), (2, 6, 6), (False,)),
    }


@pytest.mark.parametrize("name", list(_models()))
def test_library_residual_models_load_match_and_are_bounded(name: str, seed: int) -> None:
    torch.manual_seed(seed)
    model, shape, identities = _models()[name]
    net, model = _load(model, shape)
    blocks = [s for s in net.stages if isinstance(s, Residual)]
    assert [b.shortcut is None for b in blocks] == list(identities)
    _assert_matches(net, model, shape, torch.Generator().manual_seed(seed))
    _assert_bounded(net, seed)


def test_lipresidual_shortcut_is_alpha_identity(seed: int) -> None:
    torch.manual_seed(seed)
    net, model = _load(nn.Sequential(DeelResidual(6, 0.4), nn.Linear(6, 2)), (6,))
    block = net.stages[0]
    assert isinstance(block, Residual)
    a = float(torch.sigmoid(model[0].res.alpha.detach()))  # alpha as stored: 0.4 rounded to float32, then widened
    assert abs(a - 1.0 / (1.0 + np.exp(-0.4))) < 1e-8
    torch.testing.assert_close(block.shortcut_matrix(), a * torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-14)


def test_concat_residual_shortcut_keeps_the_first_half(seed: int) -> None:
    torch.manual_seed(seed)
    model = nn.Sequential(residual.ConcatResidual(nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3))),
                          nn.Linear(7, 2))
    net, model = _load(model, (7,))  # odd width: chunk gives the first half 4 entries
    block = net.stages[0]
    assert isinstance(block, Residual)
    expected = torch.zeros(7, 7, dtype=torch.float64)
    expected[:4, :4] = torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(block.shortcut_matrix(), expected, rtol=0, atol=0)
    _assert_matches(net, model, (7,), torch.Generator().manual_seed(seed))


def test_concat_residual_on_feature_maps(seed: int) -> None:
    torch.manual_seed(seed)
    fn = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1))
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), residual.ConcatResidual(fn), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 5 * 5, 3))
    net, model = _load(model, (1, 5, 5))
    _assert_matches(net, model, (1, 5, 5), torch.Generator().manual_seed(seed))
    _assert_bounded(net, seed)


def _sll_conv_stack(depth: int, channels: int) -> nn.Sequential:
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the AOL parametrization of the kernel, as in _models
    try:
        return nn.Sequential(*[sll.SDPBasedLipschitzResBlock(channels, 2, 3) for _ in range(depth)])
    finally:
        torch.set_default_dtype(default)


@pytest.mark.parametrize(("kind", "depth"), [("dense", 1), ("dense", 3), ("conv", 2)])
def test_sll_stacks_are_certified_one_lipschitz(kind: str, depth: int, seed: int) -> None:
    torch.manual_seed(seed)
    model, shape = (_sll_stack(depth, 10, 16), (10,)) if kind == "dense" else (_sll_conv_stack(depth, 2), (2, 4, 4))
    net, model = _load(model, shape)
    assert len([s for s in net.stages if isinstance(s, Residual)]) == depth
    _assert_matches(net, model, shape, torch.Generator().manual_seed(seed))
    assert abs(_assert_bounded(net, seed) - 1.0) <= 1e-6


def test_library_layers_leave_the_user_module_unchanged(seed: int) -> None:
    torch.manual_seed(seed)
    model = _sll_stack(2, 6, 6).double().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = {n for n, _ in model.named_buffers()} | {n for n, _ in model.named_parameters()}
    lipcert.load(model, input_shape=(6,))
    assert {n for n, _ in model.named_buffers()} | {n for n, _ in model.named_parameters()} == names
    assert not [n for n in dir(model) if n.startswith("_tensor_constant")]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_nested_residual_inside_concat_residual_is_refused(seed: int) -> None:
    torch.manual_seed(seed)
    inner = residual.AdditiveResidual(_mlp(4, 4, 4))
    model = nn.Sequential(residual.ConcatResidual(inner), nn.Linear(8, 2)).double().eval()
    with pytest.raises(UnsupportedOperatorError, match="nested branches"):
        lipcert.load(model, input_shape=(8,))


def test_orthogonium_parametrizations_after_double(seed: int) -> None:
    """Built in float32, OrthoLinear / UnitNormLinear load (checked at float32 tolerance); after ``.double()``
    their own forward fails (the parametrization keeps float32), which lipcert reports as the module's failure."""
    torch.manual_seed(seed)
    model = nn.Sequential(orthogonium_layers.OrthoLinear(6, 6), orthogonium_layers.MaxMin(),
                          orthogonium_layers.UnitNormLinear(6, 3)).eval()
    net = lipcert.load(model, input_shape=(6,))
    rows = torch.linalg.vector_norm(net.weights[-1], dim=1)
    torch.testing.assert_close(rows, torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-6)
    with pytest.raises(ModelLoadError, match=r"fails on an input.*keeps the dtype it was built with \(torch.float32\)"):
        lipcert.load(model.double(), input_shape=(6,))


def test_float32_sll_stack_loads_with_t_recomputed_in_float64(seed: int) -> None:
    """A float32 module (as trained) is checked at float32 tolerance; t is recomputed in float64 from its float32
    weights, so the converted blocks are exact SLL blocks and still certified at 1."""
    torch.manual_seed(seed)
    model = _sll_stack(2, 8, 12).eval()
    net = lipcert.load(model, input_shape=(8,))
    assert isinstance(net, GraphNetwork)
    assert net.info["conversion_error"] < 1e-5
    assert abs(_assert_bounded(net, seed) - 1.0) <= 1e-6


def test_crown_runs_on_library_residual_models(seed: int) -> None:
    """auto_LiRPA's CROWN on the rebuilt SLL and AdditiveResidual models (elementwise factors on flat vectors
    rebuilt as diagonal Linear layers); what it verifies, an attack must not break."""
    from lipcert.adapters.lirpa import verify
    from lipcert.attacks import attack

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    for model in (nn.Sequential(_sll_stack(2, 8, 12), nn.Linear(8, 3)),
                  nn.Sequential(nn.Linear(8, 8), residual.AdditiveResidual(_mlp(8, 8, 8)), nn.Linear(8, 3))):
        net, model = _load(model, (8,))
        x = torch.randn(6, 8, generator=gen, dtype=torch.float64)
        y = model(x).argmax(1).detach().numpy()
        radius = lipcert.certify(net, x.numpy(), y).radius
        eps = [float(np.median(radius)), 10 * float(np.median(radius))]
        result = verify(model, x.numpy(), y, eps=eps, verifier="crown")
        for e, verified in zip(eps, result.verified):
            broken = attack(net, x.numpy(), y, norm=2, eps=e, steps=20, restarts=1).success
            assert not (verified & broken).any()
        assert result.verified[0].any()
