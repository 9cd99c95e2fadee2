"""The demo that ships inside the package: a small certifiably trained model and test images.

``lipcert/data/`` holds ``demo_model.onnx`` (a 784-100-100-10 ReLU MLP trained on the full
Fashion-MNIST training set with Lipschitz-margin training by ``benchmarks/zoo/train.py``),
``demo_samples.npz`` (the first Fashion-MNIST test images as uint8, with labels and indices)
and ``demo_model.json`` (the model card: training command, seed, time, accuracies).
:func:`run` certifies the samples, attacks them and writes the full report, with no data set
and no network needed.

>>> from lipcert import demo
>>> demo.load_samples().x.shape
(500, 1, 28, 28)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .attacks import AttackResult, attack, soundness_violations
from .certification import Certification, certify
from .errors import DemoDataError
from .loading import load
from .network import Network, require_network

MODEL_FILE = "demo_model.onnx"
SAMPLES_FILE = "demo_samples.npz"
CARD_FILE = "demo_model.json"
DEFAULT_EPS = (0.5, 1.0, 1.58)
METHODS = ("combined", "naive")
INPUT_RANGE = (0.0, 1.0)


@dataclass(frozen=True, eq=False)
class Samples:
    """The bundled test images: ``x`` float32 in [0, 1] (N, 1, 28, 28), ``y`` int64, test-set ``index``."""

    x: np.ndarray
    y: np.ndarray
    index: np.ndarray
    dataset: str
    split: str


@dataclass(frozen=True, eq=False)
class DemoResult:
    """What :func:`run` computed and wrote.

    Attributes
    ----------
    network : Network
        The bundled model, loaded from its ONNX file.
    certification : Certification
        Certified L2 radii of the samples by lipcert's combined bound and, for comparison, the
        naive product of spectral norms (:data:`METHODS`).
    attacks : list of AttackResult
        PGD at every eps (empty without attack).
    violations : dict of float to int
        Inputs certified at eps (by any method) yet broken by the attack, per eps (all zero for
        sound radii).
    files : dict of str to Path
        The report files: ``"json"``, ``"samples"``, ``"markdown"``, ``"html"``.
    """

    network: Network
    certification: Certification
    attacks: list[AttackResult]
    violations: dict[float, int]
    files: dict[str, Path]


def _data(name: str) -> Any:
    return resources.files("lipcert") / "data" / name


def _read_bytes(name: str) -> bytes:
    try:
        return _data(name).read_bytes()
    except (FileNotFoundError, OSError) as exc:
        raise DemoDataError(f"the bundled demo file lipcert/data/{name} is missing; reinstall lipcert") from exc


def model_card() -> dict[str, Any]:
    """The bundled model card (``demo_model.json``)."""
    return json.loads(_read_bytes(CARD_FILE).decode("utf-8"))


def _verify(name: str, expected: str) -> None:
    if hashlib.sha256(_read_bytes(name)).hexdigest() != expected:
        raise DemoDataError(f"lipcert/data/{name} does not match the sha256 in {CARD_FILE}; reinstall lipcert")


def load_model() -> Network:
    """The bundled model as a :class:`Network` (read through the ONNX adapter, inputs in [0, 1])."""
    _verify(MODEL_FILE, model_card()["sha256"])
    with resources.as_file(_data(MODEL_FILE)) as path:
        return require_network(load(path, input_range=INPUT_RANGE), "the demo")


def load_samples() -> Samples:
    """The bundled test images and labels."""
    _verify(SAMPLES_FILE, model_card()["samples"]["sha256"])
    with resources.as_file(_data(SAMPLES_FILE)) as path, np.load(path, allow_pickle=False) as f:
        return Samples(x=f["x"].astype(np.float32) / 255, y=f["y"].astype(np.int64), index=f["index"],
                       dataset=str(f["dataset"]), split=str(f["split"]))


def run(out_dir: str | Path, *, eps: Sequence[float] = DEFAULT_EPS, attack_steps: int = 50,
        attack_restarts: int = 3, plots: bool = True, command: str | None = None) -> DemoResult:
    """Certify the bundled samples with the bundled model and write the report into ``out_dir``.

    Parameters
    ----------
    out_dir : path
        Report folder (created; earlier report files in it are replaced).
    eps : sequence of float
        L2 radii (pixels in [0, 1]) of the tables and of the attack.
    attack_steps, attack_restarts : int
        PGD budget per eps; ``attack_steps=0`` skips the attack.
    plots : bool
        Draw plots into report.html.
    command : str, optional
        Command line recorded in the report.

    Returns
    -------
    DemoResult
    """
    from .datasets import Dataset, info
    from .report import write_run

    net = load_model()
    samples = load_samples()
    cert = certify(net, samples.x, samples.y, method=list(METHODS), index=samples.index, progress=False)
    attacks = [attack(net, samples.x, samples.y, norm=2, eps=e, steps=attack_steps, restarts=attack_restarts,
                      input_range=INPUT_RANGE, progress=False) for e in eps] if attack_steps > 0 else []
    violations = {float(e): int(soundness_violations(cert, a).size) for e, a in zip(eps, attacks)}
    meta = info(samples.dataset)
    dataset = Dataset(x=samples.x, y=samples.y, name=samples.dataset, split=samples.split, total=len(samples.y),
                      source_files=(f"lipcert/data/{SAMPLES_FILE}",), verified=True,
                      note=f"the first {len(samples.y)} {meta.title} test images, bundled with lipcert", info=meta)
    with resources.as_file(_data(MODEL_FILE)) as model_path:
        report = write_run(out_dir, cert, network=net, model=model_path, dataset=dataset, eps=list(eps),
                           attack=attacks or None, command=command, plots=plots)
    return DemoResult(net, cert, attacks, violations, report.files)
