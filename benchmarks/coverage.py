"""Which public models lipcert loads, why it refuses the others, and its naive and default bounds on each.

Sources: every model of ../shared/data/manifest.json (with the manifest's mean/std; a state_dict checkpoint
with its class from lipcert.reference_models), the zoo (benchmarks/zoo/models), the ONNX files of VNN-COMP
benchmark snapshots given with ``--git`` (a git directory, e.g. the stanleybak/vnncomp2021 and
ChristopherBrix/vnncomp2022_benchmarks repositories; the first ``--per-benchmark`` files of each benchmark
folder, .onnx.gz unpacked), and small architecture probes built here with torch (DenseNet, Inception,
nested residual, ...; loaded as torch modules and as their ONNX export).  Every step (load, ``naive``,
``combined``) runs in its own process with a time limit (``--seconds``, default 60) and one thread; a step
over it is reported as skipped.  Writes benchmarks/results/coverage.md.

    python benchmarks/coverage.py [--git DIR ...] [--seconds 60] [--out benchmarks/results/coverage.md]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from run_info import REPO, SHARED_DATA, machine

CLASSES = {"mnist_6_100_nat.pth": "eran_mnist_6_100", "mnist_a_adv.pth": "mnist_cnn_a",
           "cifar_conv_small_pgd.pth": "cifar_conv_small"}
"""The class (function of lipcert.reference_models) of each state_dict checkpoint of the shared data."""

PROBES = ("densenet", "densenet_prenorm", "concat_two_branches", "inception_three_branches", "nested_residual",
          "unequal_concat_branches")
"""Architecture probes built by :func:`_probe` (torch modules on (4, 8, 8) inputs)."""


# ---------------------------------------------------------------------------------------------- worker side
def _probe(name: str) -> Any:
    """A small random model of an architecture family that real models use (eval mode, float64)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    def conv(i: int, o: int, k: int = 3) -> nn.Conv2d:
        return nn.Conv2d(i, o, k, padding=k // 2)

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c, self.d = conv(4, 3), conv(4, 3, 1), conv(7, 3), conv(4, 4)
            self.e, self.f = conv(3, 3), conv(4, 4)
            out = {"densenet": 10, "densenet_prenorm": 7, "concat_two_branches": 6,
                   "inception_three_branches": 9, "nested_residual": 4, "unequal_concat_branches": 6}[name]
            self.fc = nn.Linear(out * 64, 10)

        def forward(self, x: Any) -> Any:
            r = torch.relu
            if name == "densenet":  # DenseNet layers: x -> [x; conv(relu(x))], twice
                x = torch.cat([x, self.a(r(x))], 1)
                x = torch.cat([x, self.c(r(x))], 1)
            elif name == "densenet_prenorm":  # [x; conv(relu(conv(x)))], then relu
                x = r(torch.cat([x, self.e(r(self.a(x)))], 1))
            elif name == "concat_two_branches":  # [relu(conv3(x)); relu(conv1(x))]
                x = torch.cat([r(self.a(x)), r(self.b(x))], 1)
            elif name == "inception_three_branches":
                x = torch.cat([r(self.a(x)), r(self.b(x)), self.e(r(self.a(x)))], 1)
            elif name == "nested_residual":  # a residual block inside a residual branch
                h = r(self.d(x))
                x = r(x + h + self.f(r(h)))
            else:  # [relu(conv(x)); conv(relu(conv(relu(conv(x)))))]: branches of different depths
                x = torch.cat([r(self.a(x)), self.e(r(self.a(r(self.d(x)))))], 1)
            return self.fc(x.flatten(1))

    return Probe().eval().double()


def _load(spec: dict[str, Any]) -> Any:
    import lipcert

    if "probe" in spec:
        model = _probe(spec["probe"])
        if spec["format"] == "torch":
            return lipcert.load(model, input_shape=(4, 8, 8))
        import torch
        path = Path(spec["tmp"]) / f"{spec['probe']}.onnx"
        torch.onnx.export(model.float(), (torch.zeros(1, 4, 8, 8),), str(path), dynamo=False)
        return lipcert.load(path)
    if "class" in spec:
        from lipcert.reference_models import CHECKPOINTS
        shape = CHECKPOINTS[Path(spec["file"]).name].input_shape
        return lipcert.load(f"lipcert.reference_models:{spec['class']}", weights=spec["file"], input_shape=shape,
                            mean=spec.get("mean"), std=spec.get("std"))
    return lipcert.load(spec["file"], mean=spec.get("mean"), std=spec.get("std"))


def worker(spec: dict[str, Any], step: str) -> dict[str, Any]:
    """One step on one model, as a JSON-able dict: load (structure or error), or a bound's value."""
    import lipcert

    start = time.perf_counter()
    try:
        net = _load(spec)
    except Exception as exc:  # noqa: BLE001 - the sweep records every refusal, named by its class
        message = " ".join(str(exc).split())
        for path in (spec.get("file"), spec.get("tmp")):  # no machine paths in the table
            message = message.replace(str(path), Path(str(path)).name) if path else message
        return {"loaded": False, "error": type(exc).__name__, "message": message}
    out: dict[str, Any] = {"loaded": True, "kind": type(net).__name__, "load_seconds": time.perf_counter() - start,
                           "parameters": net.num_parameters}
    if step != "load":
        start = time.perf_counter()
        try:
            out["value"] = float(lipcert.lipschitz(net, step).value)
        except Exception as exc:  # noqa: BLE001
            out["error"], out["message"] = type(exc).__name__, " ".join(str(exc).split())
        out["seconds"] = time.perf_counter() - start
    return out


# ---------------------------------------------------------------------------------------------- parent side
def _run(spec: dict[str, Any], step: str, seconds: float) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec), "--step", step]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds, env=env, cwd=REPO,
                              check=False)
    except subprocess.TimeoutExpired:
        return {"skipped": f"over {seconds:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"skipped": f"crashed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(lines[-1])


def _git_models(git: Path, per_benchmark: int, tmp: Path) -> list[dict[str, Any]]:
    """The first ``per_benchmark`` ONNX files of each benchmark folder of a snapshot, unpacked into ``tmp``."""
    names = subprocess.run(["git", f"--git-dir={git}", "ls-tree", "-r", "--name-only", "HEAD"], capture_output=True,
                           text=True, check=True).stdout.split()
    repo = git.parent.name.split("+")[-1] if git.name == "repo" else git.name
    chosen: dict[str, list[str]] = {}
    for name in sorted(names):
        if name.endswith((".onnx", ".onnx.gz")) and "/test/" not in name:
            chosen.setdefault(name.split("/")[1], []).append(name)
    specs = []
    for folder, files in chosen.items():
        for name in files[:per_benchmark]:
            label = f"{repo}:{name}"
            blob = subprocess.run(["git", f"--git-dir={git}", "show", f"HEAD:{name}"], capture_output=True, check=False)
            if blob.returncode != 0 or not blob.stdout:
                specs.append({"label": label, "absent": "not in the snapshot (files of 4 MiB and more are left out)"})
                continue
            path = tmp / repo / name.removesuffix(".gz")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(gzip.decompress(blob.stdout) if name.endswith(".gz") else blob.stdout)
            specs.append({"label": label, "file": str(path), "group": f"VNN-COMP {folder}"})
    return specs


def _specs(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    specs: list[dict[str, Any]] = []
    manifest = json.loads((args.data / "manifest.json").read_text())
    for e in (e for e in manifest if e["kind"] == "model"):
        spec = {"label": f"shared:{e['file']}", "file": str(args.data / e["file"]), "mean": e["mean"],
                "std": e["std"], "group": "shared data"}
        specs.append(spec)
        if Path(e["file"]).name in CLASSES:
            specs.append({**spec, "label": spec["label"] + " (with its class)",
                          "class": CLASSES[Path(e["file"]).name]})
    for path in sorted((REPO / "benchmarks" / "zoo" / "models").glob("*.onnx")):
        specs.append({"label": f"zoo:{path.name}", "file": str(path), "group": "zoo"})
    for git in args.git:
        specs += _git_models(git, args.per_benchmark, tmp)
    for name in PROBES:
        for fmt in ("torch", "onnx"):
            specs.append({"label": f"probe:{name} ({fmt})", "probe": name, "format": fmt, "tmp": str(tmp),
                          "group": "architecture probes"})
    return specs


def _cell(result: dict[str, Any]) -> str:
    if "skipped" in result:
        return f"skipped: {result['skipped']}"
    if "value" in result:
        return f"{result['value']:.4g} ({result['seconds']:.1f} s)"
    return f"{result.get('error', 'not run')}" if result.get("loaded", True) else "-"


def _deduplicated(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The specs with a file already listed (same sha256 and preprocessing) marked as the same model."""
    seen: dict[str, str] = {}
    for spec in specs:
        if "file" in spec and "absent" not in spec:
            key = hashlib.sha256(Path(spec["file"]).read_bytes()).hexdigest() + repr((spec.get("mean"), spec.get(
                "std"), spec.get("class")))
            if key in seen:
                spec["absent"] = f"the same file as `{seen[key]}`"
            seen.setdefault(key, spec["label"])
    return specs


def _row(spec: dict[str, Any], seconds: float, bounds: bool) -> dict[str, Any]:
    if "absent" in spec:
        return {**spec, "load": {"skipped": spec["absent"]}}
    if not bounds:
        return {**spec, "load": _run(spec, "load", seconds)}
    naive = _run(spec, "naive", seconds)  # loads, then bounds: the load's outcome comes with it
    load = _run(spec, "load", seconds) if "skipped" in naive else naive
    row = {**spec, "load": load}
    if load.get("loaded"):
        row["naive"], row["combined"] = naive, _run(spec, "combined", seconds)
    return row


def _loaded_before(baseline: Path | None) -> dict[str, str]:
    """How each label's load went in an earlier run's JSON (``--baseline``, e.g. of the commit before a change):
    "loaded", "refused" (an error) or "skipped" (over the time limit, or not tried)."""
    if baseline is None or not baseline.is_file():
        return {}
    return {r["label"]: "loaded" if r["load"].get("loaded") else "refused" if "error" in r["load"] else "skipped"
            for r in json.loads(baseline.read_text())}


def markdown(rows: list[dict[str, Any]], command: str, before: str, after: str, earlier: dict[str, str]) -> str:
    loaded = [r for r in rows if r["load"].get("loaded")]
    tried = [r for r in rows if "absent" not in r]
    refusals = Counter(r["load"].get("error", "over the time limit") for r in tried if not r["load"].get("loaded"))
    was = Counter(earlier.get(r["label"], "skipped") for r in tried)
    then = (f" With the baseline's code: {was['loaded']} of these loaded, {was['refused']} were refused, "
            f"{was['skipped']} ran over the time limit." if earlier else "")
    lines = ["# Coverage: which models lipcert loads and bounds", "",
             f"Command: `{command}`  ", f"Machine: {before}  ", f"Machine: {after}", "",
             "Each model: `lipcert.load` (shared data with the manifest's mean/std; state_dict checkpoints also "
             "with their class), then `lipschitz(net, \"naive\")` and `lipschitz(net)` (the default, "
             "`combined`), each step in its own process with one thread and the time limit above; the time "
             "of a bound excludes loading. Architecture probes are small random torch models of families real "
             "models use, loaded as modules and as their ONNX export.", "",
             f"**{len(rows)} models listed, {len(tried)} distinct files tried, {len(loaded)} loaded.**{then} "
             "Not loaded: " + (", ".join(f"{k} {v}" for k, v in refusals.most_common()) or "none") + ".", "",
             "| model | loads? | structure or refusal | naive (time) | combined (time) |", "|---|---|---|---|---|"]
    for r in rows:
        load = r["load"]
        mark = " (new)" if load.get("loaded") and earlier.get(r["label"]) == "refused" else ""
        if load.get("loaded"):
            status, kind = f"yes{mark} ({load['load_seconds']:.1f} s)", f"{load['kind']}, {load['parameters']} parameters"
            lines.append(f"| `{r['label']}` | {status} | {kind} | {_cell(r.get('naive', {}))} | "
                         f"{_cell(r.get('combined', {}))} |")
        else:
            why = load.get("skipped") or f"{load['error']}: {load['message'][:400]}"
            status = "not tried" if "absent" in r else "no"
            lines.append(f"| `{r['label']}` | {status} | {why.replace('|', '/')} | - | - |")
    return "\n".join(lines + [""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--git", type=Path, nargs="*", default=[], help="git directories of VNN-COMP snapshots")
    parser.add_argument("--per-benchmark", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60.0, help="time limit of each step")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "coverage.md")
    parser.add_argument("--only", default="", help="run only the models whose label contains this")
    parser.add_argument("--load-only", action="store_true", help="only load (no bounds)")
    parser.add_argument("--baseline", type=Path, help="JSON rows of an earlier run, to mark what loads now only")
    parser.add_argument("--render", type=Path, nargs="*", default=[],
                        help="write the table from the JSON rows of earlier runs (parts of one sweep), running nothing")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--step", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker), args.step)))
        return
    command = "python benchmarks/coverage.py" + "".join(f" {a}" for a in sys.argv[1:])
    if args.render:  # a later part's row replaces an earlier one of the same label, in the earlier one's place
        rows = {row["label"]: row for part in args.render for row in json.loads(part.read_text())}
        runs = [line.rstrip(" ") for part in args.render for line in part.with_suffix(".md").read_text().splitlines()
                if line.startswith(("Command:", "Machine:"))]
        text = markdown(list(rows.values()), command, "the parts' runs are listed at the end",
                        machine("when rendered"), _loaded_before(args.baseline))
        args.out.with_suffix(".json").write_text(json.dumps(list(rows.values()), indent=1))
        args.out.write_text(text + "\nThe parts of this sweep (later parts replace earlier rows of the same model):\n\n"
                            + "\n".join(f"- {line}" for line in runs) + "\n")
        return
    before = machine("at the start")
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for spec in (s for s in _deduplicated(_specs(args, Path(tmp))) if args.only in s["label"]):
            rows.append(_row(spec, args.seconds, not args.load_only))
            print(f"{spec['label']}: {rows[-1]['load']}", file=sys.stderr, flush=True)
            earlier = _loaded_before(args.baseline)
            args.out.write_text(markdown(rows, command, before, machine("at the end"), earlier))  # as it goes
            args.out.with_suffix(".json").write_text(json.dumps(
                [{k: v for k, v in r.items() if k != "tmp"} for r in rows], indent=1))


if __name__ == "__main__":
    main()
