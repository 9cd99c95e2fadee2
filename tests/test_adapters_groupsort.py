"""Loading GroupSort-type activations: deel-torchlip and orthogonium modules, ONNX exports of small torch modules."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import lipcert
from lipcert import sorting
from lipcert.bounds.lower import lower_bound
from lipcert.errors import UnsupportedOperatorError

torchlip = pytest.importorskip("deel.torchlip")
orthogonium_acts = pytest.importorskip("orthogonium.layers.custom_activations")


class PairsMaxMin(nn.Module):
    """GroupSort-2 written by hand: Reshape + max/min over pairs + cat (min first)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pairs = x.reshape(x.shape[0], -1, 2)
        return torch.cat([pairs.min(dim=-1, keepdim=True).values, pairs.max(dim=-1, keepdim=True).values],
                         dim=-1).reshape(x.shape)


class HalvesMaxMin(nn.Module):
    """MaxMin on halves with Split + Max/Min (torch.maximum / torch.minimum)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(x, x.shape[1] // 2, dim=1)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)


class SortGroups(nn.Module):
    """GroupSort-4 with torch.sort (exported as TopK)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sort(x.reshape(x.shape[0], -1, 4), dim=-1).values.reshape(x.shape)


class Cubed(nn.Module):
    """Not a sorting activation: max(x, x^3) of halves."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(x, x.shape[1] // 2, dim=1)
        return torch.cat([torch.maximum(a, b * b * b), torch.minimum(a, b)], dim=1)


def model(act: nn.Module, seed: int, width: int = 8, out_width: int | None = None) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, width), act, nn.Linear(out_width or width, 3)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) / math.sqrt(p.shape[-1]))
    return net


def library_activations(seed: int) -> list[tuple[str, nn.Module, int]]:
    house = torchlip.HouseHolder(8)
    with torch.no_grad():
        house.theta.copy_(torch.rand(4, generator=torch.Generator().manual_seed(seed)) * 2 * math.pi)
    return [("torchlip.GroupSort2", torchlip.GroupSort2(), 8), ("torchlip.GroupSort(4)", torchlip.GroupSort(4), 8),
            ("torchlip.FullSort", torchlip.FullSort(), 8), ("torchlip.MaxMin", torchlip.MaxMin(), 16),
            ("torchlip.HouseHolder", house, 8), ("orthogonium.MaxMin", orthogonium_acts.MaxMin(), 8)]


def export(module: nn.Module, path: Path) -> Path:
    x = torch.randn(1, 5, dtype=torch.float64)
    torch.onnx.export(module.float(), x.float(), str(path), input_names=["x"], output_names=["y"], dynamo=False,
                      opset_version=17)
    return path


def check_sound(net: lipcert.Network, seed: int) -> None:
    """The bound is above the rigorous lower bound; the conversion matched the original."""
    assert net.info["conversion_error"] is not None
    value = lipcert.lipschitz(net, method="combined").value
    assert value >= lower_bound(net, restarts=4, samples=64, seed=seed).value


def test_library_modules_load_through_the_torch_adapter(seed: int) -> None:
    for name, act, out_width in library_activations(seed):
        net = lipcert.load(model(act, seed, out_width=out_width), input_shape=(5,))
        assert net.info["conversion_error"] <= 1e-12, name
        assert any(a.mask is not None or a.name == "relu" for a in net.activations), name
        check_sound(net, seed)


def test_hand_written_modules_load_through_the_torch_adapter(seed: int) -> None:
    for act in (PairsMaxMin(), HalvesMaxMin(), SortGroups()):
        net = lipcert.load(model(act, seed), input_shape=(5,))
        assert net.info["conversion_error"] <= 1e-12, type(act).__name__
        check_sound(net, seed)


def test_onnx_exports_of_sorting_activations_load(tmp_path: Path, seed: int) -> None:
    """Reshape + ReduceMax/ReduceMin + Concat, Split + Max/Min, TopK; and the library layers, exported."""
    acts = [(type(a).__name__, a, 8) for a in (PairsMaxMin(), HalvesMaxMin(), SortGroups())]
    acts += [entry for entry in library_activations(seed) if entry[0] != "torchlip.HouseHolder"]
    for name, act, out_width in acts:
        path = export(model(act, seed, out_width=out_width), tmp_path / "m.onnx")
        net = lipcert.load(path)
        assert net.info["conversion_error"] <= 1e-4, name  # float32 export
        check_sound(net, seed)


def test_other_max_min_subgraphs_are_refused_with_their_node_names(tmp_path: Path, seed: int) -> None:
    path = export(model(Cubed(), seed), tmp_path / "cubed.onnx")
    with pytest.raises(UnsupportedOperatorError) as info:
        lipcert.load(path)
    assert "Max" in str(info.value) and "node" in str(info.value)
    with pytest.raises(UnsupportedOperatorError, match="node '"):
        lipcert.load(model(Cubed(), seed), input_shape=(5,))


def test_conv_feature_maps_through_both_adapters(tmp_path: Path, seed: int) -> None:
    """GroupSort on the channels of conv feature maps: the torch module and its ONNX export give one Network."""
    torch.manual_seed(seed)
    conv = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), torchlip.GroupSort2(), nn.Conv2d(4, 4, 3),
                         orthogonium_acts.MaxMin(), nn.Flatten(), nn.Linear(4, 3)).double()
    from_torch = lipcert.load(conv, input_shape=(1, 7, 7))
    assert from_torch.info["conversion_error"] <= 1e-12
    x = torch.randn(1, 1, 7, 7)
    torch.onnx.export(conv.float(), x, str(tmp_path / "conv.onnx"), dynamo=False, opset_version=17)
    from_onnx = lipcert.load(tmp_path / "conv.onnx")
    assert from_onnx.widths == from_torch.widths
    a, b = lipcert.lipschitz(from_torch).value, lipcert.lipschitz(from_onnx).value
    assert a == pytest.approx(b, rel=1e-5)  # float32 weights of the export
    check_sound(from_torch, seed)


def test_crown_bounds_the_rewritten_activations(seed: int) -> None:
    """auto_LiRPA on the rebuilt chain (|z| as z + 2 relu(-z)): it equals the Network, and what CROWN verifies
    survives PGD."""
    from lipcert.adapters import lirpa
    from lipcert.adapters.rebuild import to_torch

    gen = torch.Generator().manual_seed(seed)
    ws = [torch.randn(8, 6, generator=gen, dtype=torch.float64) / 2,
          torch.randn(8, 8, generator=gen, dtype=torch.float64) / 2,
          torch.randn(3, 8, generator=gen, dtype=torch.float64) / 2]
    net = sorting.chain(ws, None, [sorting.groupsort_stages(8, 4), sorting.maxmin_halves_stages(8)])
    x = torch.randn(16, 6, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        assert float((to_torch(net)(x) - net(x)).abs().max()) <= 1e-12
    y = net(x).argmax(dim=1).numpy()
    eps = 0.05
    verified = lirpa.verify(net, x.numpy(), y, eps=eps, norm="inf", verifier="crown").verified
    hit = lipcert.attack(net, x, y, norm="inf", eps=eps, steps=30, restarts=2)
    assert not np.any(np.asarray(verified).reshape(-1) & hit.success)
    assert np.asarray(verified).any()
