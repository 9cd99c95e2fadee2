"""Train small Lipschitz-by-construction residual classifiers with the libraries their users use.

Two Fashion-MNIST models of issue 17 part 5, each built only from the library's own layers:

* ``orthogonium`` (SLL, Araujo et al. ICLR 2023): ``OrthoLinear`` 784 -> 256, then ``depth`` dense SLL
  blocks h(x) = x - 2 W^T diag(t) relu(W x + b) (``SDPBasedLipschitzDense``, 1-Lipschitz by
  construction) with a ``MaxMin`` after each, and a ``UnitNormLinear`` last layer (rows of norm 1);
  loss: orthogonium's ``LossXent`` (cross-entropy with a margin offset and temperature).
* ``torchlip`` (deel-torchlip): ``SpectralLinear`` 784 -> 256 and ``GroupSort2``, then ``depth`` blocks
  y = a x + (1 - a) GroupSort2(SpectralLinear(x)) with a = sigmoid(alpha) learned (``LipResidual``),
  and a ``SpectralLinear`` last layer; loss: deel-torchlip's ``TauCrossEntropyLoss``.

The library's claim is that every such model is 1-Lipschitz (each logit; its spectral
normalization estimates norms by power iteration).  The trained model is converted to plain torch
(parametrizations removed, SLL's t folded into the weights) and exported to ONNX (opset 13, input
(N, 1, 28, 28), dynamic batch), checked against onnxruntime, and a JSON model card with the command,
seed, times and accuracies is written next to it.  lipcert's certified bounds are computed by
benchmarks/graphs.py, not here.

From the repository root::

    python benchmarks/zoo/train_residual.py --library orthogonium --epochs 10 --seed 0 \\
        --data-dir ../shared/data/datasets --out benchmarks/zoo/models/fmnist-sll-maxmin.onnx
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from train import load_split, sha256

WIDTH = 256


class Residual(nn.Module):
    """y = a x + (1 - a) branch(x), a = sigmoid(alpha): deel-torchlip's LipResidual around a branch."""

    def __init__(self, branch: nn.Module) -> None:
        from deel import torchlip
        super().__init__()
        self.branch = branch
        self.mix = torchlip.LipResidual()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(x, self.branch(x))


class PlainSLL(nn.Module):
    """x - 2 W^T diag(t) relu(W x + b): an SLL block with t frozen, in plain torch."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, t: torch.Tensor) -> None:
        super().__init__()
        self.inner = nn.Linear(weight.shape[1], weight.shape[0])
        self.outer = nn.Linear(weight.shape[0], weight.shape[1], bias=False)
        with torch.no_grad():
            self.inner.weight.copy_(weight)
            self.inner.bias.copy_(bias.reshape(-1))
            self.outer.weight.copy_(-2 * weight.T * t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.outer(torch.relu(self.inner(x)))


def build(library: str, depth: int) -> nn.Sequential:
    """The model of ``library`` (see the module docstring) with ``depth`` residual blocks."""
    if library == "orthogonium":
        from orthogonium.layers.conv.SLL.sll_layer import SDPBasedLipschitzDense
        from orthogonium.layers.custom_activations import MaxMin
        from orthogonium.layers.linear.ortho_linear import OrthoLinear, UnitNormLinear
        blocks: list[nn.Module] = []
        for _ in range(depth):
            blocks += [SDPBasedLipschitzDense(WIDTH, WIDTH, WIDTH), MaxMin()]
        return nn.Sequential(nn.Flatten(), OrthoLinear(784, WIDTH), MaxMin(), *blocks, UnitNormLinear(WIDTH, 10))
    if library == "torchlip":
        from deel import torchlip
        blocks = [Residual(nn.Sequential(torchlip.SpectralLinear(WIDTH, WIDTH), torchlip.GroupSort2()))
                  for _ in range(depth)]
        return nn.Sequential(nn.Flatten(), torchlip.SpectralLinear(784, WIDTH), torchlip.GroupSort2(), *blocks,
                             torchlip.SpectralLinear(WIDTH, 10))
    raise ValueError(f"unknown library {library!r}; known: orthogonium, torchlip")


def loss_function(library: str) -> nn.Module:
    if library == "orthogonium":
        from orthogonium.losses import LossXent
        return LossXent(10, offset=2.12, temperature=0.25)
    from deel import torchlip
    return torchlip.TauCrossEntropyLoss(tau=4.0)


class PlainMix(nn.Module):
    """y = a x + (1 - a) branch(x) with a fixed: a trained ``Residual`` in plain torch."""

    def __init__(self, a: float, branch: nn.Module) -> None:
        super().__init__()
        self.a, self.branch = a, branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * x + (1 - self.a) * self.branch(x)


def plain(module: nn.Module) -> nn.Module:
    """``module`` in plain torch: Linear for parametrized linears, SLL's t and LipResidual's mix frozen."""
    from orthogonium.layers.conv.SLL.sll_layer import SDPBasedLipschitzDense
    with torch.no_grad():
        if isinstance(module, nn.Sequential):
            return nn.Sequential(*(plain(m) for m in module))
        if isinstance(module, Residual):
            return PlainMix(float(torch.sigmoid(module.mix.alpha)), plain(module.branch))
        if isinstance(module, SDPBasedLipschitzDense):
            return PlainSLL(module.weight, module.bias, module.compute_t())
        if hasattr(module, "vanilla_export"):
            return module.vanilla_export()
        if isinstance(module, nn.Linear):
            linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            linear.weight.copy_(module.weight)
            if module.bias is not None:
                linear.bias.copy_(module.bias)
            return linear
    return module


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--library", choices=("orthogonium", "torchlip"), required=True)
    p.add_argument("--depth", type=int, default=4, help="number of residual blocks")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    x, y = load_split("fashion-mnist", args.data_dir, "train", None, False)
    xt, yt = load_split("fashion-mnist", args.data_dir, "test", None, False)
    model, loss_fn = build(args.library, args.depth), loss_function(args.library)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.epochs * -(-len(x) // args.batch_size))
    load = os.getloadavg()[0]
    start, cpu0, history = time.time(), time.process_time(), []
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x))
        for i in range(0, len(x), args.batch_size):
            idx = order[i:i + args.batch_size]
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        history.append({"epoch": epoch + 1, "loss": float(loss.detach()), "test_clean": accuracy(model, xt, yt)})
        print(history[-1], flush=True)
    wall, cpu = time.time() - start, time.process_time() - cpu0
    exported = plain(model).eval()
    worst = float((exported(xt[:1000]) - model(xt[:1000])).abs().max())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(exported, (xt[:1],), str(args.out), opset_version=13, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                      dynamo=False)
    import onnxruntime
    sess = onnxruntime.InferenceSession(str(args.out))
    ort = sess.run(None, {"input": xt[:1000].numpy()})[0]
    ort_error = float(np.abs(ort - model(xt[:1000]).detach().numpy()).max())
    card = {
        "model": args.out.name, "sha256": sha256(args.out), "dataset": "fashion-mnist",
        "library": args.library, "architecture": repr(model).replace("\n", " "),
        "library_claim": "1-Lipschitz by construction (each logit)",
        "input": {"shape": [1, 28, 28], "range": [0.0, 1.0],
                  "preprocessing": "uint8 pixels / 255, no normalization (radii are in these units)"},
        "training": {"command": "python " + shlex.join(sys.argv), "epochs": args.epochs, "depth": args.depth,
                     "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "train_images": len(x),
                     "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
                     "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch "
                                f"threads, torch {torch.__version__}; load average {load:.1f} when training started",
                     "history": history},
        "export": {"plain_torch_max_abs_diff": worst, "onnxruntime_max_abs_diff": ort_error},
        "test_clean_accuracy": accuracy(model, xt, yt),
    }
    args.out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {args.out}; clean {card['test_clean_accuracy']:.4f}; train {wall:.0f} s; "
          f"onnxruntime diff {ort_error:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
