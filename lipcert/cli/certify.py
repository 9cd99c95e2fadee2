"""``lipcert certify MODEL --dataset mnist --eps 0.5,1,1.58 --out runs/x``: certified accuracy of a model.

Writes ``records.jsonl`` (per-input records, as the run goes), ``attack.jsonl`` (one line per
attacked eps, with --attack), then ``report.json``, ``samples.csv``, ``report.md`` and
``report.html``.  ``--resume`` continues an interrupted run from its records.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..attacks import AttackResult, attack
from ..batch import check_count, check_number
from ..bounds import METHODS
from ..bounds.methods import resolve
from ..certification import Certification, certify, method_bound
from ..errors import (DatasetError, InvalidArgumentError, InvalidRadiusError, ResumeError, ShapeMismatchError,
                      UnknownMethodError)
from ..graph import AnyNetwork
from ..norms import check_eps, parse_norm
from ..report import RunReport, write_run
from ..runfolder import (RUN_FILES, check_output_folder, discard_aside, folder_kind, hold, recorded_rows,
                         set_aside)
from .cluster import add_cluster_arguments, cluster_client
from .common import add_model_arguments, floats, load_model
from .config_source import add_config_argument, apply_config

DEFAULT_EPS = {
    ("mnist", "2"): "0.5,1,1.58", ("fashion-mnist", "2"): "0.5,1,1.58",
    ("cifar10", "2"): "36/255,72/255,108/255",
    ("mnist", "inf"): "0.1,0.2,0.3", ("fashion-mnist", "inf"): "0.1,0.2,0.3", ("cifar10", "inf"): "2/255,8/255",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("certify", help="certified accuracy and radii of a model on a data set",
                       description="Certified radii from pairwise Lipschitz bounds, with reports "
                                   "(report.json, samples.csv, report.md, report.html) in --out.")
    add_model_arguments(p, many=True)
    add_run_arguments(p)
    p.add_argument("--attack", action="store_true", help="also run PGD at every eps: upper bounds on robust "
                                                         "accuracy and a soundness check")
    add_cluster_arguments(p)
    p.set_defaults(run=run)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Data, norm, eps, methods and output options of a certification run (also used by ``lipcert compare``)."""
    p.add_argument("--dataset", default=None,
                   help="mnist, fashion-mnist, cifar10, or a .npz (arrays x, y) / .npy file of your own (required "
                        "unless --config names one)")
    p.add_argument("--split", default="test", help="data set split (default: test)")
    p.add_argument("--data-dir", default=None, help="folder holding the data set files (default: search "
                                                    "$LIPCERT_DATA, the cache, /usr/share/datasets)")
    p.add_argument("--n", type=int, default=None, help="certify the first N inputs (default: all)")
    p.add_argument("--norm", default=None, help="2 (l2, default) or inf (linf); L-inf radii are L2 radii / sqrt(d)")
    p.add_argument("--eps", type=floats, default=None,
                   help="radii for the tables, e.g. 0.5,1,1.58 or 36/255,72/255 (defaults per data set and norm)")
    p.add_argument("--method", action="append", default=None,
                   help="bound method(s), repeated or comma-separated, e.g. naive,eclipse-fast,combined "
                        f"(default: combined). Known: {', '.join(METHODS)}")
    p.add_argument("--out", required=True, help="output folder of the run")
    p.add_argument("--batch-size", type=int, default=1000, help="inputs per forward pass (default: 1000)")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="extra absolute error allowed on every logit (e.g. the gap to float32 inference)")
    p.add_argument("--local", action="store_true",
                   help="also certify with per-input local Lipschitz constants (method 'local'; slower)")
    p.add_argument("--local-iterations", type=int, default=None, metavar="N",
                   help="with --local: L-BFGS iterations of each optimized margin (0: closed forms only; "
                        "default: lipcert.local.DEFAULT_ITERATIONS)")
    p.add_argument("--attack-steps", type=int, default=50, help="PGD steps per restart (default: 50)")
    p.add_argument("--attack-restarts", type=int, default=3, help="PGD restarts (default: 3)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--overwrite", action="store_true", help="discard an earlier run in --out")
    p.add_argument("--no-plots", action="store_true", help="HTML report without plots")
    add_config_argument(p)


def _methods(requested: list[str] | None) -> list[str]:
    """The --method names, each checked against the registry before anything is computed."""
    names = [m.strip() for item in (requested or ["combined"]) for m in item.split(",") if m.strip()]
    if not names:
        raise UnknownMethodError(f"--method {','.join(requested or [])!r} names no method; known: {', '.join(METHODS)}")
    for name in names:
        resolve(name)
    return list(dict.fromkeys(names))


def _eps(args: argparse.Namespace, norm: str) -> list[float]:
    if args.eps is not None:
        if not args.eps:
            raise InvalidRadiusError("--eps is empty")
        return [float(e) for e in check_eps(args.eps)]
    name = str(args.dataset)
    if Path(name).suffix.lower() not in (".npz", ".npy"):
        from .. import datasets

        name = datasets.info(name).name  # an unknown data set name is refused here, naming the known ones
    if (name, norm) not in DEFAULT_EPS:
        raise InvalidRadiusError(f"no default --eps for data set {args.dataset!r} and norm {norm}; pass --eps")
    return floats(DEFAULT_EPS[name, norm])


def _inputs(net: AnyNetwork, x: np.ndarray) -> tuple[np.ndarray, str]:
    """The inputs in the network's shape: reshaped (row-major) when only the layout differs."""
    if tuple(x.shape[1:]) == net.input_shape:
        return x, ""
    if math.prod(x.shape[1:]) == net.input_dim:
        return (x.reshape(x.shape[0], *net.input_shape),
                f"inputs of shape {tuple(x.shape[1:])} were reshaped (row-major) to the model's {net.input_shape}")
    raise ShapeMismatchError(f"the data set's inputs have shape {tuple(x.shape[1:])} "
                             f"({math.prod(x.shape[1:])} values) but the model takes {net.input_shape} "
                             f"({net.input_dim} values)")


def _load_data(args: argparse.Namespace) -> Any:
    from .. import datasets

    if args.n is not None and args.n < 1:
        raise DatasetError(f"--n must be a positive integer, got {args.n}")
    return datasets.load(args.dataset, split=args.split, root=args.data_dir, limit=args.n)


def _attack_all(args: argparse.Namespace, net: AnyNetwork, x: np.ndarray, y: np.ndarray, norm: str, eps: list[float],
                input_range: tuple[float, float] | None) -> list[AttackResult]:
    """PGD at every eps; one line per finished eps in attack.jsonl so a resumed run skips it."""
    path = Path(args.out) / "attack.jsonl"
    done: dict[float, AttackResult] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                break
            if rec.get("steps") == args.attack_steps and rec.get("restarts") == args.attack_restarts \
                    and rec.get("n") == len(y) and rec.get("norm") == norm:
                done[float(rec["eps"])] = AttackResult(
                    norm=norm, eps=np.full(len(y), float(rec["eps"])), success=np.array(rec["success"], dtype=bool),
                    adversarial=None, margin=np.array(rec["margin"], dtype=np.float64), steps=rec["steps"],
                    restarts=rec["restarts"], seconds=float(rec["seconds"]))
    out = []
    for e in eps:
        if e in done:
            out.append(done[e])
            continue
        res = attack(net, x, y, norm=norm, eps=e, steps=args.attack_steps, restarts=args.attack_restarts,
                     input_range=input_range)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"eps": e, "norm": norm, "n": len(y), "steps": res.steps, "restarts": res.restarts,
                                 "seconds": res.seconds, "success": [int(s) for s in res.success],
                                 "margin": [float(m) for m in res.margin]}) + "\n")
        out.append(res)
    return out


@dataclass(frozen=True, eq=False)
class CertifyRun:
    """What one certification run loaded and produced (for subcommands that build on it)."""

    network: AnyNetwork
    data: Any
    x: np.ndarray
    y: np.ndarray
    norm: str
    eps: list[float]
    certification: Certification
    attacks: list[AttackResult]
    report: RunReport


def run(args: argparse.Namespace) -> int:
    models = list(args.model or [])
    args.model = models[0] if len(models) == 1 else None
    if len(models) > 1:
        return _sweep(args, models)
    with cluster_client(args) as client:
        done = certify_run(args, Path(args.out), client=client)
    rec = done.report.record
    _print_summary(rec)
    if "local_per_input" in rec["timings"]:
        print(f"local radii: {rec['timings']['local_per_input']:.3g} s per input")
    print(f"wrote {', '.join(str(p) for p in done.report.files.values())}")
    violations = sum(rec["attack"]["violations"]) if rec["attack"] else 0
    if violations:
        print(f"error: {violations} inputs are certified yet broken by the attack: a certified radius is wrong",
              file=sys.stderr)
        return 1
    return 0


def _sweep(args: argparse.Namespace, models: list[str]) -> int:
    """``lipcert certify MODEL1 MODEL2 ... --out DIR``: one run folder per model in DIR and their comparison
    (comparison.json, report.md, report.html) in DIR; on a cluster, the models' bounds are computed in
    parallel first, then each model's inputs are sharded."""
    from ..report import compare_runs

    if getattr(args, "model_class", None) is not None:
        raise InvalidArgumentError("several MODEL files and --model MODULE:CLASS exclude each other")
    out = Path(args.out)
    check_output_folder(out, accept=("missing", "empty", "sweep"))
    stems = [Path(m).stem or "model" for m in models]
    names = [s if stems.count(s) == 1 else f"{i + 1}-{s}" for i, s in enumerate(stems)]
    violations = 0
    with cluster_client(args) as client:
        bounds = _bounds_on_cluster(args, models, client) if client is not None else {}
        runs = []
        for model, name in zip(models, names):
            args.model = model
            done = certify_run(args, out / name, client=client, bounds=bounds.get(model))
            rec = done.report.record
            print(f"{model}: {rec['n_inputs']} inputs, clean {100 * rec['clean_accuracy']:.2f} %, certified "
                  + ", ".join(f"{m} {100 * rec['certified_accuracy'][m][0]:.2f} %" for m in rec["methods"])
                  + f" at eps {rec['eps'][0]:.4g} -> {out / name}")
            violations += sum(rec["attack"]["violations"]) if rec["attack"] else 0
            runs.append(done.report.out_dir)
    result = compare_runs(runs, out, eps=args.eps, plots=not args.no_plots)
    print(f"wrote {', '.join(str(p) for p in result.files.values())}")
    if violations:
        print(f"error: {violations} inputs are certified yet broken by the attack: a certified radius is wrong",
              file=sys.stderr)
    return 1 if violations else 0


def _bounds_on_cluster(args: argparse.Namespace, models: list[str], client: Any) -> dict[str, dict[str, Any]]:
    """Every model's global bounds, computed in parallel on the cluster (one task per model and method)."""
    methods = _methods(args.method)
    tasks = {}
    for model in models:
        args.model = model
        net = load_model(args)
        for name in methods:
            tasks[model, name] = client.submit(method_bound, net, name, _max_bytes(args), pure=False)
    done = dict(zip(tasks, client.gather(list(tasks.values()))))
    return {model: {name: done[model, name] for name in methods} for model in models}


def certify_run(args: argparse.Namespace, out: Path, client: Any = None,
                bounds: dict[str, Any] | None = None) -> CertifyRun:
    """Load the model and data of ``args``, certify (resumable records in ``out``; on the Dask cluster of
    ``client`` when given; with the global ``bounds`` of the model when already computed), attack, write
    the run report.

    Everything that can be checked is checked before ``out`` is touched: arguments, the folder (a
    file, unwritable, or holding files that are not a lipcert run: refused), the lock (a second
    writer is refused), the model and the data.  ``--overwrite`` then sets the earlier run aside and
    deletes it only when the new run has finished; a new run that fails before writing a record
    puts it back.
    """
    start = time.perf_counter()
    config = apply_config(args)
    if args.dataset is None:
        raise DatasetError("--dataset is required (or a --config whose data.dataset names one)")
    norm = parse_norm(args.norm or "2")
    eps = _eps(args, norm)
    methods = _methods(args.method)
    _check_numbers(args)
    if args.resume and args.overwrite:
        raise InvalidArgumentError("--resume and --overwrite exclude each other: continue the run or start over")
    kind = check_output_folder(out, accept=("missing", "empty", "run"))
    if kind == "run" and not (args.resume or args.overwrite):
        raise ResumeError(f"{out} already holds a run; pass --resume to continue it or --overwrite to start over")
    records = out / "records.jsonl"
    with hold(records):  # a second writer is refused here, before anything of the first one is touched
        aside = None
        try:
            net = load_model(args)
            if config is not None:
                net.info["config"] = str(config.path)
            data = _load_data(args)
            x, note = _inputs(net, np.asarray(data.x))
            y = np.asarray(data.y)
            _say_data_notes(args, x, note)
            aside = set_aside(out) if args.overwrite else None
            cert = certify(net, x, y, norm=norm, method=methods, bound=bounds, batch_size=args.batch_size,
                           index=np.arange(len(y)), tolerance=args.tolerance, records=records, resume=args.resume,
                           client=client, max_bytes=_max_bytes(args),
                           local={"iterations": args.local_iterations}
                           if args.local and args.local_iterations is not None else args.local)
            if cert.resumed:
                print(f"resumed: {cert.resumed} of {cert.n} inputs read from {records}", file=sys.stderr)
            attacks: list[AttackResult] = []
            if args.attack:
                box = net.input_range or ((0.0, 1.0) if getattr(data, "info", None) is not None else None)
                attacks = _attack_all(args, net, x, y, norm, [e for e in eps if e > 0], box)
            report = write_run(out, cert, network=net, model=args.model, dataset=data, eps=eps, attack=attacks,
                               timings={"total": time.perf_counter() - start},
                               command=shlex.join(["lipcert", *sys.argv[1:]]) if sys.argv else None,
                               plots=not args.no_plots)
        except BaseException:
            _undo(out, kind, aside)
            raise
        discard_aside(aside)
    return CertifyRun(net, data, x, y, norm, eps, cert, attacks, report)


def _max_bytes(args: argparse.Namespace) -> float | None:
    """--max-dense-gb in bytes (None: the default limit)."""
    return None if args.max_dense_gb is None else args.max_dense_gb * 1e9


def _check_numbers(args: argparse.Namespace) -> None:
    """Every count and number of the run, checked before the folder or the model is touched."""
    check_count("--batch-size", args.batch_size)
    check_number("--tolerance", args.tolerance)
    check_count("--attack-steps", args.attack_steps, 0)
    check_count("--attack-restarts", args.attack_restarts)
    if args.local_iterations is not None:
        check_count("--local-iterations", args.local_iterations, 0)


def _undo(out: Path, kind: str, aside: Path | None) -> None:
    """After a failed run (the lock still held): remove the folder this run created if it holds nothing
    but lipcert's bookkeeping; put an earlier run set aside back when the new one wrote no record, else
    say where it is."""
    if kind == "missing" and folder_kind(out) == "empty":
        shutil.rmtree(out, ignore_errors=True)
    elif aside is not None and not recorded_rows(out / "records.jsonl"):
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        for p in aside.iterdir():
            p.replace(out / p.name)
        aside.rmdir()
    elif aside is not None:
        print(f"note: the earlier run is kept in {aside}", file=sys.stderr)


def _say_data_notes(args: argparse.Namespace, x: np.ndarray, note: str) -> None:
    """Print on the terminal what the report files would otherwise say alone: reshaped inputs and fewer
    inputs than --n (inputs outside the model's input range: a warning of :func:`lipcert.certify`)."""
    if note:
        print(f"note: {note}", file=sys.stderr)
    if args.n is not None and len(x) < args.n:
        print(f"note: --n {args.n} asks for more inputs than the data set holds; certifying all {len(x)}",
              file=sys.stderr)


def _print_summary(rec: dict[str, Any]) -> None:
    eps = rec["eps"]
    from ..report.render import eps_label

    header = f"{'method':<16}{'bound':>12}{'clean':>9}" + "".join(f"{'eps=' + eps_label(e):>13}" for e in eps)
    print(f"{rec['n_inputs']} inputs, norm L{'2' if rec['norm'] == '2' else '-inf'}; accuracies in %")
    print(header)
    print("-" * len(header))
    for m in rec["methods"]:
        accs = rec["certified_accuracy"][m]
        print(f"{m:<16}{rec['lipschitz'][m]['value']:>12.5g}{100 * rec['clean_accuracy']:>9.2f}"
              + "".join(f"{100 * a:>13.2f}" for a in accs))
    if rec["attack"]:
        upper = dict(zip(rec["attack"]["eps"], rec["attack"]["upper_bound"]))
        print(f"{'PGD upper bound':<16}{'':>12}{100 * rec['clean_accuracy']:>9.2f}"
              + "".join(f"{100 * upper[e]:>13.2f}" if e in upper else f"{'':>13}" for e in eps))
