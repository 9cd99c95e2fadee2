"""auto_LiRPA next to lipcert: the rebuilt module, the verifier results, combine, the compare CLI, the extra."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lipcert
from lipcert.adapters import lirpa
from lipcert.adapters.modules import ActivationModule
from lipcert.adapters.rebuild import to_torch
from lipcert.errors import LipcertError, MissingExtraError

from _certify_models import mnist

MODELS = Path("models")
CNN = MODELS / "mnist_cnn_a_adv" / "mnist_a_adv.onnx"
MLP = MODELS / "eran_mnist_6_100" / "mnist_6_100_nat.onnx"
OVAL = MODELS / "oval21_cifar_base_kw" / "cifar_base_kw.onnx"
OVAL_NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.225, 0.225, 0.225]}


def _small_conv() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, stride=2, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 4, 3, stride=2, padding=(0, 1)), torch.nn.Tanh(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 1 * 2, 3)).eval()


def _same_outputs(net: lipcert.Network, module: torch.nn.Module, seed: int = 0) -> float:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(6, *net.input_shape, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        return float((module(x) - torch.as_tensor(net(x))).abs().max())


def test_rebuilt_module_equals_network_mlp_and_conv() -> None:
    gen = np.random.default_rng(1)
    net = lipcert.Network.from_weights([gen.standard_normal((7, 5)), gen.standard_normal((3, 7))],
                                       [gen.standard_normal(7), gen.standard_normal(3)], activation="sigmoid")
    assert _same_outputs(net, to_torch(net)) < 1e-12
    conv = _small_conv()
    module = to_torch(conv, input_shape=(1, 8, 8), mean=0.5, std=0.25)
    assert any(isinstance(m, torch.nn.Conv2d) for m in module)  # convolutions stay convolutions
    assert _same_outputs(lipcert.load(conv, input_shape=(1, 8, 8), mean=0.5, std=0.25), module) < 1e-12


@pytest.mark.parametrize("path", [CNN, MLP, OVAL])
def test_rebuilt_module_equals_network_onnx(shared_data: Path, path: Path) -> None:
    options = OVAL_NORM if path == OVAL else {}
    module = to_torch(shared_data / path, **options)
    net = lipcert.load(shared_data / path, **options)
    assert (path != MLP) == any(isinstance(m, torch.nn.Conv2d) for m in module)
    assert _same_outputs(net, module) < 1e-9


def test_missing_auto_lirpa_raises_with_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "auto_LiRPA", None)  # makes `import auto_LiRPA` fail
    with pytest.raises(MissingExtraError, match=r"pip install --no-deps auto-LiRPA==0\.3"):
        lirpa.bounded_module(lipcert.Network.from_weights([np.eye(2)]))
    code = ("import sys; sys.modules['auto_LiRPA'] = None; import lipcert, lipcert.cli, lipcert.adapters.lirpa; "
            "print(lipcert.combine.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "combine"


@pytest.mark.parametrize("norm", ["2", "inf"])
def test_linear_model_exact_for_both(norm: str) -> None:
    """No activation: CROWN's margin bound is the true minimum over the ball, lipcert's radius the exact one."""
    gen = np.random.default_rng(3)
    w, b = gen.standard_normal((4, 6)), gen.standard_normal(4)
    net = lipcert.Network.from_weights([w], [b])
    x = gen.uniform(-1, 1, (8, 6))
    y = (x @ w.T + b).argmax(axis=1)
    eps = 0.05
    res = lirpa.verify(net, x, y, eps=[eps], norm=norm, verifier="crown")
    dual = 2 if norm == "2" else 1
    for i in range(len(y)):
        others = [j for j in range(4) if j != y[i]]
        diff = w[y[i]] - w[others]
        exact = diff @ x[i] + b[y[i]] - b[others] - eps * np.linalg.norm(diff, ord=dual, axis=1)
        np.testing.assert_allclose(res.lower[0, i], exact, rtol=1e-9, atol=1e-9)
    if norm == "2":
        cert = lipcert.certify(net, x, y, norm=2, method="naive")
        margins = (x @ w.T + b)[np.arange(8), y][:, None] - (x @ w.T + b)
        gaps = np.linalg.norm(w[y][:, None, :] - w[None, :, :], axis=2)
        exact_r = np.min(np.where(gaps > 0, margins / np.where(gaps > 0, gaps, 1), np.inf), axis=1)
        assert np.all(cert.radius <= exact_r) and np.allclose(cert.radius, exact_r, rtol=1e-9)
        search = lirpa.certified_radius(net, x, y, norm=2, steps=10)
        assert np.all(search.radius <= exact_r * (1 + 1e-9)) and np.all(search.upper >= exact_r * (1 - 1e-9))
        assert np.all(search.upper / search.radius - 1 <= 2.0**-10 + 1e-12)


def test_verify_names_bad_inputs_and_labels() -> None:
    net = lipcert.Network.from_weights([np.ones((3, 6))])
    x, y = np.zeros((2, 6)), np.array([0, 1])
    for bad_x, bad_y, message in ((np.zeros((2, 5)), y, "inputs of shape"), (x, np.array([0, 3]), "out of range"),
                                  (x, np.array([0]), "labels must have shape"), (x, np.array([0.5, 1]), "integers")):
        with pytest.raises(lipcert.errors.ShapeMismatchError, match=message):
            lirpa.verify(net, bad_x, bad_y, eps=[0.1])


def test_nothing_certified_is_broken_by_the_attack(shared_data: Path) -> None:
    net = lipcert.load(shared_data / MLP)
    data = mnist(shared_data, limit=8)
    x, y = np.asarray(data.x), np.asarray(data.y)
    lm = lirpa.bounded_module(shared_data / MLP)
    for norm, eps in (("inf", 0.01), ("2", 0.3)):
        cert = lipcert.certify(net, x, y, norm=norm, method="combined")
        res = lirpa.verify(lm, x, y, eps=[eps], norm=norm, verifier="crown")
        att = lipcert.attack(net, x, y, norm=norm, eps=eps, steps=20, restarts=1, input_range=None)
        assert res.verified[0].any()
        assert not (att.success & (res.verified[0] | cert.certified(eps))).any()
        assert np.all(res.verified[0] <= (res.prediction == y))


def test_preactivation_bounds_contain_sampled_values() -> None:
    gen = np.random.default_rng(5)
    net = lipcert.Network.from_weights([gen.standard_normal((6, 4)), gen.standard_normal((5, 6)),
                                        gen.standard_normal((2, 5))])
    x = gen.standard_normal((3, 4))
    bounds = lirpa.preactivation_bounds(net, x, eps=0.1, norm="inf")
    assert [b.shape for b in bounds.lower] == [(3, 6), (3, 5)]
    pts = x[:, None, :] + gen.uniform(-0.1, 0.1, (3, 200, 4))
    z1 = pts @ net.weights[0].numpy().T + net.biases[0].numpy()
    z2 = np.maximum(z1, 0) @ net.weights[1].numpy().T + net.biases[1].numpy()
    for k, z in enumerate((z1, z2)):
        assert np.all(bounds.lower[k][:, None, :] <= z + 1e-9) and np.all(z <= bounds.upper[k][:, None, :] + 1e-9)


def test_combine_union_and_provenance() -> None:
    gen = np.random.default_rng(7)
    net = lipcert.Network.from_weights([gen.standard_normal((10, 4)), gen.standard_normal((3, 10))])
    x = gen.standard_normal((40, 4))
    y = np.asarray(net(x)).argmax(axis=1)
    y[:4] = (y[:4] + 1) % 3  # a few misclassified inputs
    cert = lipcert.certify(net, x, y, norm=2)
    eps = [float(np.quantile(cert.radius[cert.correct], 0.4)), 0.2]
    out = lipcert.combine(net, x, y, eps=eps, norm=2, verifier="crown")
    assert np.array_equal(out.by_either, out.by_lipcert | out.by_verifier)
    assert np.array_equal(out.ran_verifier, cert.correct[None, :] & ~out.by_lipcert)
    assert not (out.by_verifier & ~out.ran_verifier).any()
    assert out.by_lipcert[0].sum() >= 20 and out.by_verifier.any()
    alone = lirpa.verify(net, x, y, eps=eps, norm=2, verifier="crown")
    assert np.array_equal(out.by_verifier, alone.verified & out.ran_verifier)
    assert np.array_equal(out.by_either, alone.verified | out.by_lipcert)
    prov = out.provenance
    assert set(prov[out.by_lipcert]) == {"lipcert"} and set(prov[out.by_verifier & ~out.by_lipcert]) <= {"crown"}
    assert set(prov[~out.by_either]) == {"none"}
    saved = out.time_saved(alone.input_seconds.sum(axis=1))
    assert np.all(np.isfinite(saved)) and np.all(np.isfinite(out.time_saved()))


def test_combine_rejects_a_certification_of_another_norm_or_inputs() -> None:
    # f_0 - f_1 = sum(x) + 1 on 16 inputs: L2 radius 1/4 at x = 0, L-infinity radius only 1/16,
    # so L2 radii taken as L-infinity certificates at eps 1/8 would be broken by x - eps.
    w = np.vstack([np.ones(16), np.zeros(16)])
    net = lipcert.Network.from_weights([w], [np.array([1.0, 0.0])])
    x, y = np.zeros((2, 16)), np.array([0, 0])
    cert = lipcert.certify(net, x, y, norm=2)
    assert cert.radius[0] >= 1 / 8 and np.asarray(net(x - 1 / 8)).argmax(axis=1)[0] != 0
    with pytest.raises(LipcertError, match="does not match"):
        lipcert.combine(net, x, y, eps=[1 / 8], norm="inf", certification=cert)
    with pytest.raises(LipcertError, match="does not match"):
        lipcert.combine(net, x[:1], y[:1], eps=[1 / 8], norm=2, certification=cert)


def test_compare_cli_end_to_end(shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    from lipcert.cli import main

    monkeypatch.setenv("LIPCERT_DATA", str(shared_data / "datasets"))
    common = [str(shared_data / MLP), "--dataset", "mnist", "--n", "6", "--norm", "inf", "--eps", "0.002,0.01",
              "--method", "naive,combined", "--attack-steps", "10", "--attack-restarts", "1", "--no-plots"]
    assert main(["compare", *common, "--verifier", "crown,ibp", "--radius-steps", "3",
                 "--out", str(tmp_path / "all")]) == 0
    rec = json.loads((tmp_path / "all" / "comparison.json").read_text())
    assert rec["kind"] == "verifier-comparison" and set(rec["verifiers"]) == {"crown", "ibp"}
    for name in ("crown", "ibp"):
        for a, acc in zip(rec["agreement"][name], rec["verifiers"][name]["certified_accuracy"]):
            assert sum(a.values()) == 6 and math.isclose((a["both"] + a["only_verifier"]) / 6, acc)
        assert all(c >= v for c, v in zip(rec["combined"][name]["certified_accuracy"],
                                            rec["verifiers"][name]["certified_accuracy"]))
    assert rec["verifiers"]["crown"]["certified_accuracy"][0] > 0
    assert all(v == 0 for per in rec["attack"]["violations"].values() for v in per)
    assert rec["radius"]["median"] > 0 and (tmp_path / "all" / "lipcert" / "report.json").is_file()
    assert "Agreement" in (tmp_path / "all" / "report.md").read_text()
    assert main(["compare", *common, "--verifier", "crown", "--strategy", "lipschitz-first",
                 "--out", str(tmp_path / "first")]) == 0
    first = json.loads((tmp_path / "first" / "comparison.json").read_text())
    assert first["combined"]["crown"]["certified_accuracy"] == rec["combined"]["crown"]["certified_accuracy"]
    lines = (tmp_path / "first" / "comparison_samples.csv").read_text().splitlines()
    assert "source:crown@0.002" in lines[0].split(",")
    capsys.readouterr()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "report.md").write_text("my notes")
    assert main(["compare", *common, "--verifier", "crown", "--out", str(tmp_path / "mine")]) == 2
    assert "holds files that lipcert did not write (report.md)" in capsys.readouterr().err
    assert (tmp_path / "mine" / "report.md").read_text() == "my notes"


def test_readme_auto_lirpa_example(shared_data: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "certify_batch" in b)
    path = shared_data / "models" / "eran_mnist_6_100" / "mnist_6_100_nat.pth"
    monkeypatch.setenv("LIPCERT_DATA", str(shared_data / "datasets"))
    exec(compile(code.replace('"mnist_6_100_nat.pth"', repr(str(path))), "README.md", "exec"), {})
    crown, lip, union, radius = (float(v) for v in capsys.readouterr().out.split())
    assert crown > 0.5 and max(crown, lip) <= union <= 1 and radius > 0


def test_verify_normalized_conv_with_sigmoid() -> None:
    """Per-channel normalization before a grouped convolution, and sigmoid: exact at eps=0, sound above
    (auto_LiRPA 0.3 gave margin bounds above the true margin through grouped convolutions and sigmoid)."""
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, stride=2, groups=3), torch.nn.Sigmoid(), torch.nn.Flatten(),
                                torch.nn.Linear(6 * 3 * 3, 3)).eval()
    norm = {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}
    net = lipcert.load(model, input_shape=(3, 7, 7), **norm)
    lm = lirpa.bounded_module(model, input_shape=(3, 7, 7), **norm)
    gen = np.random.default_rng(4)
    x = gen.uniform(0, 1, (5, 3, 7, 7))
    logits = np.asarray(net(x))
    y = logits.argmax(axis=1)
    res = lirpa.verify(lm, x, y, eps=[0.0, 0.02], norm="inf", verifier="crown")
    assert res.verified[0].all()
    margins = np.stack([logits[i, y[i]] - np.delete(logits[i], y[i]) for i in range(5)])
    np.testing.assert_allclose(res.lower[0], margins, rtol=1e-9, atol=1e-9)
    pts = x[:, None] + gen.uniform(-0.02, 0.02, (5, 50, 3, 7, 7))
    out = np.asarray(net(pts.reshape(-1, 3, 7, 7))).reshape(5, 50, 3)
    for i in range(5):
        sampled = out[i, :, y[i], None] - np.delete(out[i], y[i], axis=1)
        assert np.all(res.lower[1, i] <= sampled.min(axis=0) + 1e-9)


@pytest.mark.parametrize("normalized", [False, True])
def test_verify_a_network_with_convolutions_kept_as_operators(normalized: bool) -> None:
    """``lipcert.load`` keeps convolutions as operators; verify(net) rebuilds them as convolutions (the bias
    of a normalization folded into a zero-padded kernel varies within a channel: a flat sum, matrix mode).
    Both verifiers run (auto_LiRPA 0.3 crashed on the flat bias sums in patches mode), are exact at eps=0,
    below sampled margins at eps > 0, and alpha-CROWN is at least CROWN."""
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, stride=2, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 4 * 4, 3)).eval()
    norm = {"mean": [0.4, 0.6], "std": [0.3, 0.2]} if normalized else {}
    net = lipcert.load(model, input_shape=(2, 8, 8), **norm)
    assert all(op is not None for op in net.operators[:2])
    module = to_torch(net)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in module) == 2 and module.flat_merges == normalized
    assert _same_outputs(net, module) < 1e-12
    gen = np.random.default_rng(6)
    x = gen.uniform(0, 1, (4, 2, 8, 8))
    logits = np.asarray(net(x))
    y = logits.argmax(axis=1)
    margins = np.stack([logits[i, y[i]] - np.delete(logits[i], y[i]) for i in range(4)])
    lm = lirpa.bounded_module(net)
    crown = lirpa.verify(lm, x, y, eps=[0.0, 0.05], verifier="crown")
    alpha = lirpa.verify(lm, x, y, eps=[0.0, 0.05], verifier="alpha-crown")
    np.testing.assert_allclose(crown.lower[0], margins, rtol=1e-9, atol=1e-9)
    assert np.all(alpha.lower[1] >= crown.lower[1] - 1e-9)
    step = gen.standard_normal((4, 200, 2, 8, 8))
    step *= 0.05 * gen.uniform(0, 1, (4, 200, 1, 1, 1)) / np.linalg.norm(step.reshape(4, 200, -1), axis=2)[..., None, None, None]
    out = np.asarray(net((x[:, None] + step).reshape(-1, 2, 8, 8))).reshape(4, 200, 3)
    for i in range(4):
        sampled = out[i, :, y[i], None] - np.delete(out[i], y[i], axis=1)
        assert np.all(alpha.lower[1, i] <= sampled.min(axis=0) + 1e-9)
    pre = lirpa.preactivation_bounds(lm, x[:1], eps=0.05)  # local radii's intervals, same rebuild
    cuts = [i for i, m in enumerate(module) if isinstance(m, ActivationModule)]
    points = torch.from_numpy(x[0] + step[0])
    for cut, lo, hi in zip(cuts, pre.lower, pre.upper):
        with torch.no_grad():
            z = torch.nn.Sequential(*list(module)[:cut])(points).flatten(1).numpy()
        assert np.all(lo[0] <= z.min(axis=0) + 1e-9) and np.all(z.max(axis=0) <= hi[0] + 1e-9)


def test_loading_auto_lirpa_keeps_the_callers_warning_filters() -> None:
    """auto_LiRPA 0.3 calls warnings.simplefilter('once') at import; the adapter must undo it (fresh process)."""
    code = ("import warnings\n"
            "from lipcert.adapters import lirpa\n"
            "before = list(warnings.filters)\n"
            "lirpa.load_auto_lirpa()\n"
            "assert warnings.filters == before, warnings.filters[:3]\n")
    done = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", code],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "torch.jit.script" not in done.stderr


class _SortResidual(torch.nn.Module):
    """Linear, sort activation, then h -> (h + Linear(act(h))) / 2 (a residual merge: the activation's input
    also feeds the skip connection), then Linear to 3 classes."""

    def __init__(self, act: torch.nn.Module, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.first, self.branch, self.last = torch.nn.Linear(5, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.first(x))
        return self.last(0.5 * h + 0.5 * self.branch(self.act(h)))


@pytest.mark.parametrize("library", ["deel.torchlip GroupSort2", "orthogonium MaxMin"])
def test_crown_on_residual_sort_model_exported_to_onnx(library: str, tmp_path: Path) -> None:
    # the rebuilt abs_or_identity layers once kept the tracing batch size (1) in a Reshape, and the
    # merge's Scale a parameter shape auto_LiRPA rejects: CROWN failed on batches of such models
    if library.startswith("deel"):
        act = pytest.importorskip("deel.torchlip").GroupSort2()
    else:
        act = pytest.importorskip("orthogonium.layers.custom_activations").MaxMin()
    seed = 11
    print("seed", seed)
    path = tmp_path / "sort_residual.onnx"
    torch.onnx.export(_SortResidual(act, seed).eval(), torch.zeros(1, 5), str(path), input_names=["x"],
                      output_names=["y"], dynamo=False, opset_version=17)
    gen = np.random.default_rng(seed)
    x = gen.standard_normal((8, 5))
    net = lipcert.load(path)
    y = np.asarray(net(torch.as_tensor(x))).argmax(axis=1)  # labels = predictions: margins are positive
    eps = [0.02, 0.3, 1.0, 3.0]
    res = lirpa.verify(path, x, y, eps=eps, verifier="crown", batch_size=8)
    assert res.verified[0].all() and not res.verified[-1].all()  # the check below has inputs on both sides
    for k, e in enumerate(eps):
        att = lipcert.attack(net, x, y, eps=e, steps=50, restarts=2, dtype=torch.float64)
        print(f"eps {e}: {res.verified[k].sum()} verified by CROWN, {att.success.sum()} broken by PGD")
        assert not (att.success & res.verified[k]).any()
        assert att.success.any() or k < len(eps) - 1  # the attack can break what CROWN does not prove
