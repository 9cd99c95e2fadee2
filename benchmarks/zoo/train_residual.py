"""Train small Lipschitz-by-construction residual classifiers with the libraries their users use.

Three Fashion-MNIST models of issue 17 part 5, two built only from a library's own layers and one
trained with lipcert's own differentiable bound:

* ``orthogonium`` (SLL, Araujo et al. ICLR 2023): ``OrthoLinear`` 784 -> 256, then ``depth`` dense SLL
  blocks h(x) = x - 2 W^T diag(t) relu(W x + b) (``SDPBasedLipschitzDense``, 1-Lipschitz by
  construction) with a ``MaxMin`` after each, and a ``UnitNormLinear`` last layer (rows of norm 1);
  loss: orthogonium's ``LossXent`` (cross-entropy with a margin offset and temperature).
* ``torchlip`` (deel-torchlip): ``SpectralLinear`` 784 -> 256 and ``GroupSort2``, then ``depth`` blocks
  y = a x + (1 - a) GroupSort2(SpectralLinear(x)) with a = sigmoid(alpha) learned (``LipResidual``),
  and a ``SpectralLinear`` last layer; loss: deel-torchlip's ``TauCrossEntropyLoss``.

* ``lipcert``: ``Linear`` 784 -> 128 and ``MaxMin``, then ``depth`` blocks h(x) = x + G MaxMin(W x + b)
  (plain torch, orthogonium's ``MaxMin``) and a ``Linear`` last layer, unconstrained, trained with
  GloRo's loss (benchmarks/zoo/train.py) at radius ``--eps`` whose margin constants are
  ||w_y - w_j|| prod_k rho_k ||W_0||_2, rho_k lipcert's residual-block certificate of block k
  (decisions 30) computed differentiably with multipliers from ``block_constant`` refreshed every
  ``--multipliers-every`` steps (:mod:`lipcert.bounds.block_training`, decisions 49).  Its "claim"
  is that training-time bound, recorded in the card; it is not a certificate.

The libraries' claim is that every such model is 1-Lipschitz (each logit; its spectral
normalization estimates norms by power iteration).  The trained model is converted to plain torch
(parametrizations removed, SLL's t folded into the weights) and exported to ONNX (opset 13, input
(N, 1, 28, 28), dynamic batch), checked against onnxruntime, and a JSON model card with the command,
seed, times and accuracies is written next to it.  lipcert's certified bounds are computed by
benchmarks/graphs.py, not here.

From the repository root::

    python benchmarks/zoo/train_residual.py --library orthogonium --epochs 10 --seed 0 \\
        --data-dir ../shared/data/datasets --out benchmarks/zoo/models/fmnist-sll-maxmin.onnx
    python benchmarks/zoo/train_residual.py --library lipcert --width 128 --epochs 30 --multipliers-every 5 \\
        --seed 0 --data-dir ../shared/data/datasets --out benchmarks/zoo/models/fmnist-resmaxmin-lipcert.onnx
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
from torch.nn import functional as F

from lipcert.bounds.block_training import BlockCertificate
from lipcert.sorting import maxmin_halves_stages
from train import gloro_logits, load_split, sha256

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


class MaxMinBlock(nn.Module):
    """x + G MaxMin(W x + b) (orthogonium's MaxMin on the halves), unconstrained, in plain torch."""

    def __init__(self, width: int) -> None:
        from orthogonium.layers.custom_activations import MaxMin
        super().__init__()
        self.inner = nn.Linear(width, width)
        self.act = MaxMin()
        self.outer = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.outer(self.act(self.inner(x)))


class MarginBound:
    """K x K margin constants ||w_y - w_j|| prod_k rho_k ||W_0||_2 of the ``lipcert`` model, differentiable.

    rho_k is lipcert's block certificate of block k (:class:`BlockCertificate`) after MaxMin's exact
    rewrite T -> (|.| on half the neurons, identity) -> T^T (lipcert.sorting): inner T W, outer G T^T,
    slopes [-1, 1] on the |.| neurons and [1, 1] on the others.  float64; the last value of
    prod_k rho_k ||W_0||_2 (a bound on Lip of the features before the last layer) is kept in ``global_value``.
    """

    def __init__(self, model: nn.Sequential, every: int) -> None:
        self.first, self.head = model[1], model[-1]
        self.blocks = [m for m in model if isinstance(m, MaxMinBlock)]
        self.certs = [BlockCertificate(every) for _ in self.blocks]
        stage = maxmin_halves_stages(self.first.out_features)[0]
        self.to, self.back = stage.to, stage.back
        mask = torch.tensor(stage.mask)
        self.alpha = torch.where(mask, -1.0, 1.0).double()
        self.beta = torch.ones_like(self.alpha)
        self.eye = torch.eye(len(mask), dtype=torch.float64)
        self.global_value = float("nan")

    def __call__(self) -> torch.Tensor:
        rho = torch.linalg.matrix_norm(self.first.weight.double(), ord=2)
        for block, cert in zip(self.blocks, self.certs):
            rho = rho * cert(self.eye, self.to @ block.inner.weight.double(), block.outer.weight.double() @ self.back,
                             self.alpha, self.beta)
        self.global_value = float(rho.detach())
        head = self.head.weight.double()
        pair = (head[:, None, :] - head[None, :, :]).pow(2).sum(-1).clamp_min(1e-12).sqrt()
        return (pair * rho).float()


def build(library: str, depth: int, width: int = WIDTH) -> nn.Sequential:
    """The model of ``library`` (see the module docstring) with ``depth`` residual blocks."""
    if library == "orthogonium":
        from orthogonium.layers.conv.SLL.sll_layer import SDPBasedLipschitzDense
        from orthogonium.layers.custom_activations import MaxMin
        from orthogonium.layers.linear.ortho_linear import OrthoLinear, UnitNormLinear
        blocks: list[nn.Module] = []
        for _ in range(depth):
            blocks += [SDPBasedLipschitzDense(width, width, width), MaxMin()]
        return nn.Sequential(nn.Flatten(), OrthoLinear(784, width), MaxMin(), *blocks, UnitNormLinear(width, 10))
    if library == "torchlip":
        from deel import torchlip
        blocks = [Residual(nn.Sequential(torchlip.SpectralLinear(width, width), torchlip.GroupSort2()))
                  for _ in range(depth)]
        return nn.Sequential(nn.Flatten(), torchlip.SpectralLinear(784, width), torchlip.GroupSort2(), *blocks,
                             torchlip.SpectralLinear(width, 10))
    if library == "lipcert":
        from orthogonium.layers.custom_activations import MaxMin
        return nn.Sequential(nn.Flatten(), nn.Linear(784, width), MaxMin(), *(MaxMinBlock(width) for _ in range(depth)),
                             nn.Linear(width, 10))
    raise ValueError(f"unknown library {library!r}; known: orthogonium, torchlip, lipcert")


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
    p.add_argument("--library", choices=("orthogonium", "torchlip", "lipcert"), required=True)
    p.add_argument("--depth", type=int, default=4, help="number of residual blocks")
    p.add_argument("--width", type=int, default=WIDTH, help="width of the residual blocks")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eps", type=float, default=1.0, help="lipcert: GloRo training radius (L2, [0, 1] pixel units)")
    p.add_argument("--ramp", type=float, default=2.0, help="lipcert: epochs over which the radius ramps up from 0")
    p.add_argument("--multipliers-every", type=int, default=10,
                   help="lipcert: steps between block_constant's choices of the block multipliers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    x, y = load_split("fashion-mnist", args.data_dir, "train", None, False)
    xt, yt = load_split("fashion-mnist", args.data_dir, "test", None, False)
    model = build(args.library, args.depth, args.width)
    steps = -(-len(x) // args.batch_size)
    if args.library == "lipcert":
        margin = MarginBound(model, args.multipliers_every)

        def objective(logits: torch.Tensor, labels: torch.Tensor, step: int) -> torch.Tensor:
            eps = args.eps * min(1.0, (step + 1) / max(1.0, args.ramp * steps))
            return F.cross_entropy(gloro_logits(logits, labels, margin(), eps), labels)
    else:
        loss_fn = loss_function(args.library)

        def objective(logits: torch.Tensor, labels: torch.Tensor, step: int) -> torch.Tensor:
            return loss_fn(logits, labels)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.epochs * steps)
    load = os.getloadavg()[0]
    start, cpu0, history, step = time.time(), time.process_time(), [], 0
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x))
        epoch_start = time.time()
        for i in range(0, len(x), args.batch_size):
            idx = order[i:i + args.batch_size]
            loss = objective(model(x[idx]), y[idx], step)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        model.eval()
        history.append({"epoch": epoch + 1, "loss": float(loss.detach()), "test_clean": accuracy(model, xt, yt),
                        "seconds": round(time.time() - epoch_start, 1)})
        if args.library == "lipcert":
            history[-1]["training_bound_features"] = margin.global_value
        print(history[-1], flush=True)
    wall, cpu = time.time() - start, time.process_time() - cpu0
    exported = plain(model).eval()
    with torch.no_grad():
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
        "library_claim": ("none: GloRo-trained with lipcert's differentiable block certificate (training_bound)"
                          if args.library == "lipcert" else "1-Lipschitz by construction (each logit)"),
        "input": {"shape": [1, 28, 28], "range": [0.0, 1.0],
                  "preprocessing": "uint8 pixels / 255, no normalization (radii are in these units)"},
        "training": {"command": "python " + shlex.join(sys.argv), "epochs": args.epochs, "depth": args.depth,
                     "width": args.width,
                     "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "train_images": len(x),
                     "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
                     "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch "
                                f"threads, torch {torch.__version__}; load average {load:.1f} when training started",
                     "history": history},
        "export": {"plain_torch_max_abs_diff": worst, "onnxruntime_max_abs_diff": ort_error},
        "test_clean_accuracy": accuracy(model, xt, yt),
    }
    if args.library == "lipcert":
        with torch.no_grad():
            pairwise = margin()
        card["training"].update({"eps": args.eps, "ramp_epochs": args.ramp, "multipliers_every": args.multipliers_every,
                                 "block_constant_calls": sum(c.refreshes for c in margin.certs)})
        head = float(torch.linalg.matrix_norm(margin.head.weight.detach().double(), ord=2))
        card["training_bound"] = {"global": margin.global_value * head, "features": margin.global_value,
                                  "head_norm": head, "pairwise": pairwise.double().tolist(),
                                  "note": "float64 training-time values (multipliers from block_constant, not "
                                          "inflated): not a certificate; benchmarks/graphs.py certifies the model"}
    args.out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {args.out}; clean {card['test_clean_accuracy']:.4f}; train {wall:.0f} s; "
          f"onnxruntime diff {ort_error:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
