"""A Lipschitz-trained conv net side by side: LipNaive, lipcert's per-frequency bounds, alpha-CROWN, the trainer's claim.

Run (repository root)::

    python benchmarks/conv_trained.py --model benchmarks/zoo/models/fmnist-conv-large-power.onnx [--n 200] [--alpha-n 20]

appends a section to ``--out`` (default benchmarks/results/conv.md).  On the first ``--n`` Fashion-MNIST
test images, L2, pixels in [0, 1], at the zoo's radii (:data:`conv.EPS`), each row in a fresh process
(``peak MB``: its ru_maxrss, python + torch + lipcert included; ``bound peak MB``: growth during the bound):

* ``lipcert naive`` forced onto the matrix-free path: the product of certified conv norms (SDP-CROWN's
  LipNaive, computed without dense matrices);
* ``lipcert eclipse-fast`` and ``lipcert combined`` with the automatic path choice (per frequency on
  ConvLarge: the dense form does not fit the memory budget);
* ``CROWN`` and ``alpha-CROWN`` (``--verifiers``): auto_LiRPA 0.3 through :func:`lipcert.adapters.lirpa.verify`
  (the same float64 function, margin specification, no clipping) on the first ``--alpha-n`` images, each in
  a process capped at ``--alpha-memory-gb`` of address space, with lipcert's bounds on those images;
* ``claim``: what the trainer certifies with (GloRo with ``--bound power``, as LiResNet/SLL-style code does):
  ||W_L[y] - W_L[j]|| times the product of power-iteration norms of the other layers (``--power-steps``),
  which converge from below, so it is not a bound; shown beside lipcert's certified naive;
* PGD (``lipcert.attack``, inputs kept in [0, 1]) at every radius: an upper bound on robust accuracy, and
  every certificate above (lipcert's, alpha-CROWN's and the claim's) checked against it.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conv import EPS
from run_info import REPO, SHARED_DATA, machine, peak_mb, run_child

ROWS = [("naive", "matrix-free"), ("eclipse-fast", "auto"), ("combined", "auto")]


def _data(spec: dict[str, Any], n: int) -> tuple[np.ndarray, np.ndarray]:
    import lipcert.datasets

    return lipcert.datasets.load(spec["dataset"], split="test", root=SHARED_DATA / "datasets", limit=n)


def power_claim(net: Any, steps: int, seed: int = 0) -> tuple[np.ndarray, float]:
    """The trainer's constants: K x K ||W_L[y] - W_L[j]|| * prod_{k<L} sigma_k, and prod_k sigma_k over every
    layer, sigma_k from ``steps`` power iterations on layer k (operators by their convolution and its adjoint).
    Each sigma_k is ||W_k v|| for a unit v, at most ||W_k||: from below."""
    gen = torch.Generator().manual_seed(seed)
    ops = list(net.operators) or [None] * net.depth
    sigmas = []
    for w, op in zip(net.weights, ops):
        fwd = (lambda v, w=w: v @ w.T) if op is None else op.matmat
        adj = (lambda u, w=w: u @ w) if op is None else op.rmatmat
        v = torch.randn(1, (w.shape[1] if op is None else op.shape[1]), dtype=torch.float64, generator=gen)
        for _ in range(steps):
            v = adj(fwd(v))
            v = v / v.norm()
        sigmas.append(float(fwd(v).norm()))
    last = net.weights[-1]
    return torch.cdist(last, last).numpy() * float(np.prod(sigmas[:-1])), float(np.prod(sigmas))


def child(spec: dict[str, Any]) -> dict[str, Any]:
    import lipcert
    from lipcert.memory import PeakMemory

    if spec.get("memory_gb"):  # a verifier that grows past it fails here instead of starving the shared machine
        limit = int(spec["memory_gb"] * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    torch.set_num_threads(1)
    net = lipcert.load(spec["model"], input_range=(0.0, 1.0))
    eps = list(EPS[spec["dataset"]])
    x, y = _data(spec, spec["n"])
    out: dict[str, Any] = {"label": spec["label"], "kind": spec["kind"], "n": spec["n"]}
    start = time.perf_counter()
    if spec["kind"] == "lipcert":
        with PeakMemory() as memory:
            bound = lipcert.lipschitz(net, spec["method"], path=spec["path"])
        t0 = time.perf_counter()
        cert = lipcert.certify(net, x, y, bound=bound, progress=False)
        out.update(value=bound.value, path=bound.extras.get("path", "dense"), bound_s=bound.seconds,
                   certify_s=time.perf_counter() - t0, bound_peak_mb=memory.peak_bytes / 1e6,
                   radius=cert.radius.tolist(), clean=float(cert.clean_accuracy))
        out["certified"] = [cert.certified(e).tolist() for e in eps]
    elif spec["kind"] == "verifier":
        from lipcert.adapters.lirpa import verify

        out.update(certified=[], bound_s=0.0, path="auto_LiRPA", errors=[])
        with PeakMemory() as memory:
            for e in eps:  # one radius at a time: a larger one may run out of memory where a smaller one fits
                try:
                    res = verify(net, x, y, eps=[e], verifier=spec["verifier"], batch_size=spec["batch"])
                except (MemoryError, RuntimeError) as exc:  # torch: "DefaultCPUAllocator: can't allocate memory"
                    out["certified"].append(None)
                    out["errors"].append(f"eps {e:g}: {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:160]}")
                    continue
                out["certified"].append(res.certified(e).tolist())
                out["bound_s"] += res.seconds
        out["bound_peak_mb"] = memory.peak_bytes / 1e6
    else:  # the trainer's claim
        pairwise, product = power_claim(net, spec["steps"])
        logits = np.asarray(net(x))
        pred = logits.argmax(axis=1)
        margin = logits[np.arange(len(y)), y][:, None] - logits
        with np.errstate(divide="ignore"):
            ratio = np.where(np.arange(logits.shape[1])[None, :] == y[:, None], np.inf, margin / pairwise[y])
        radius = np.where(pred == y, ratio.min(axis=1), 0.0)
        out.update(value=product, path=f"power iteration, {spec['steps']} steps",
                   bound_s=time.perf_counter() - start, radius=radius.tolist(),
                   certified=[(radius >= e).tolist() for e in eps])
    out["seconds"] = time.perf_counter() - start
    out["peak_mb"] = peak_mb()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "benchmarks/zoo/models/fmnist-conv-large-power.onnx")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--alpha-n", type=int, default=20)
    parser.add_argument("--alpha-batch", type=int, default=1)
    parser.add_argument("--alpha-memory-gb", type=float, default=8.0,
                        help="address-space limit of each verifier's process")
    parser.add_argument("--verifiers", default="crown,alpha-crown", help="auto_LiRPA methods, on the first --alpha-n")
    parser.add_argument("--power-steps", type=int, default=500)
    parser.add_argument("--pgd-steps", type=int, default=50)
    parser.add_argument("--pgd-restarts", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "conv.md")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    import lipcert

    command = "python benchmarks/" + " ".join(shlex.quote(a) for a in [Path(__file__).name, *sys.argv[1:]])
    start_line = machine("at the start")
    base = {"model": str(args.model.resolve()), "dataset": args.dataset, "n": args.n}
    specs = [{**base, "kind": "lipcert", "method": m, "path": p, "label": f"lipcert {m}"} for m, p in ROWS]
    specs.append({**base, "kind": "claim", "steps": args.power_steps, "label": "claim (trainer's power iteration)"})
    specs += [{**base, "kind": "verifier", "verifier": v, "n": args.alpha_n, "batch": args.alpha_batch,
               "memory_gb": args.alpha_memory_gb, "label": f"auto_LiRPA {name}"}
              for v, name in (("crown", "CROWN"), ("alpha-crown", "alpha-CROWN")) if v in args.verifiers.split(",")]
    results = []
    for spec in specs:
        results.append(run_child(__file__, spec))
        print(json.dumps({k: v for k, v in results[-1].items() if k not in ("radius", "certified")}), flush=True)
    eps = list(EPS[args.dataset])
    net = lipcert.load(args.model, input_range=(0.0, 1.0))
    x, y = _data(base, args.n)
    attacks = [lipcert.attack(net, x, y, norm=2, eps=e, steps=args.pgd_steps, restarts=args.pgd_restarts,
                              input_range=(0.0, 1.0), progress=False) for e in eps]
    pgd_s = sum(a.seconds for a in attacks)
    rows: list[str] = []
    notes: list[str] = []
    for r in results:
        if "failed" in r:
            rows.append(f"| {r['label']} | {r['n']} | failed: {r['failed']} |" + " |" * 7)
            continue
        cert = [None if c is None else np.array(c, dtype=bool) for c in r["certified"]]
        broken = sum(int((c & a.success[:r["n"]]).sum()) for c, a in zip(cert, attacks) if c is not None)
        value = f"{r['value']:.6g}" if "value" in r else "-"
        rows.append(f"| {r['label']} | {r['n']} | {r['path']} | {value} | {r['bound_s']:.1f} | "
                    f"{r.get('certify_s', 0):.1f} | {r.get('bound_peak_mb', 0):.0f} | {r['peak_mb']:.0f} | "
                    + " / ".join("out of memory" if c is None else f"{100 * c.mean():.1f}" for c in cert)
                    + f" | {broken} |")
        notes += [f"- {r['label']}: {err}" for err in r.get("errors", [])]
        if r["label"] == specs[-1]["label"] and r["kind"] == "verifier":  # lipcert's certificates on its images
            for other in results:
                if other.get("kind") == "lipcert" and "failed" not in other:
                    sub = np.array(other["certified"], dtype=bool)[:, :r["n"]]
                    rows.append(f"| {other['label']} on the verifiers' images | {r['n']} | | | | | | | "
                                + " / ".join(f"{100 * c.mean():.1f}" for c in sub) + " | |")
    rows.append(f"| PGD upper bound ({args.pgd_steps} steps x {args.pgd_restarts} restarts) | {args.n} | | | "
                f"{pgd_s:.1f} | | | | " + " / ".join(f"{100 * a.robust_accuracy:.1f}" for a in attacks) + " | |")
    clean = next((r["clean"] for r in results if "clean" in r), float("nan"))
    text = "\n".join([
        "", f"## Trained {args.model.name}: LipNaive, per-frequency bounds, alpha-CROWN and the trainer's claim", "",
        f"Command: `{command}`.", "", start_line + ".", machine() + ".", "",
        f"First {args.n} {args.dataset} test images (clean accuracy {100 * clean:.1f} %), L2, pixels in [0, 1]; "
        f"certified accuracy in % at eps {' / '.join(f'{e:g}' for e in eps)}. seconds: the bound (a verifier: "
        "all its images and radii), then the certify pass; peak MB: ru_maxrss of the row's process; broken: "
        "certificates (input, eps) that PGD broke (0 for a sound method).", "",
        "| method | images | path | Lipschitz bound | bound s | certify s | bound peak MB | peak MB | certified % "
        "| broken |", "|---|---:|---|---:|---:|---:|---:|---:|---|---:|", *rows, "", *notes, ""])
    with args.out.open("a", encoding="utf-8") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
