"""Matplotlib figures as base64 PNGs for the self-contained HTML report.

matplotlib (a dependency) is imported lazily, so that ``import lipcert`` does not load it, and
without pyplot (no global state, no display needed).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Curve:
    """One certified-accuracy curve: radii (0 or below for misclassified inputs) of one method on one run."""

    label: str
    radii: np.ndarray
    correct: np.ndarray
    clean_accuracy: float
    attack_eps: tuple[float, ...] = ()
    attack_upper: tuple[float, ...] = ()
    attack_label: str = "PGD upper bound"


def available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _png(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure():
    from matplotlib.figure import Figure

    return Figure(figsize=(6.4, 4.0))


def accuracy_plot(curves: Sequence[Curve], eps_max: float, norm: str) -> str:
    """Certified accuracy against eps for every curve, with clean accuracy and attack upper bounds."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    grid = np.linspace(0.0, eps_max, 400)
    colors = [f"C{i % 10}" for i in range(len(curves))]
    one_clean = len({c.clean_accuracy for c in curves}) == 1
    if one_clean and curves:
        ax.axhline(100 * curves[0].clean_accuracy, color="gray", linestyle=":", label="clean accuracy")
    for c, color in zip(curves, colors):
        r = np.where(c.correct, c.radii, -np.inf)
        acc = (r[None, :] >= grid[:, None]).mean(axis=1) if r.size else np.zeros_like(grid)
        ax.plot(grid, 100 * acc, color=color, label=f"{c.label} (certified)")
        if not one_clean:
            ax.scatter([0.0], [100 * c.clean_accuracy], color=color, marker="o", zorder=3)
        if c.attack_eps:
            ax.plot(c.attack_eps, [100 * u for u in c.attack_upper], color="black" if one_clean else color,
                    linestyle="--", marker="x", label=c.attack_label)
    ax.set_xlabel(f"eps (L{'2' if norm == '2' else '-inf'} radius, input units)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_xlim(0, eps_max)
    ax.grid(alpha=0.3)
    ax.set_title("Certified accuracy" + ("" if one_clean else " (dots at eps = 0: clean accuracy)"))
    ax.legend(fontsize=7)
    return _png(fig)


def histogram_plot(curves: Sequence[Curve], norm: str) -> str:
    """Histogram of the certified radii of correctly classified inputs."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    data = [c.radii[c.correct & np.isfinite(c.radii)] for c in curves]
    top = max((float(d.max()) for d in data if d.size), default=1.0) or 1.0
    bins = np.linspace(0.0, top, 41)
    for c, d in zip(curves, data):
        ax.hist(d, bins=bins, histtype="step", linewidth=1.5, label=c.label)
    ax.set_xlabel(f"certified L{'2' if norm == '2' else '-inf'} radius (correctly classified inputs)")
    ax.set_ylabel("inputs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)
