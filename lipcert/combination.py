"""Lipschitz first, verifier second: the union of lipcert's certificates and a bound-propagation verifier's.

lipcert certifies what it can from margins and one Lipschitz bound (a forward pass per input);
the verifier (auto_LiRPA's IBP, CROWN or alpha-CROWN) runs only on the inputs that remain
(correctly classified and not certified by lipcert at that eps).  Both certify the same
property, so the union is sound whenever both are.

:func:`certify_batch` is the small entry point for an existing auto_LiRPA script: lipcert's
certified mask and radii of one batch, to merge with the script's own results.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .bounds import LipschitzBound
from .certification import Certification, _as_inputs, certify
from .errors import InvalidArgumentError
from .loading import as_network
from .network import Network
from .norms import Norm, check_eps, parse_norm
from .results import EpsLike, grid_rows, largest_proven

LIPCERT, NONE = "lipcert", "none"


@dataclass(frozen=True, eq=False)
class Combination:
    """Certificates of lipcert and a verifier, the verifier run only where lipcert did not certify.

    Attributes
    ----------
    verifier : str
        ``"ibp"``, ``"crown"`` or ``"alpha-crown"``.
    norm : str
    eps : ndarray (E,)
    index, label : ndarray of int64 (N,)
    by_lipcert : ndarray of bool (E, N)
        Certified by lipcert (correct and lipcert's radius >= eps).
    by_verifier : ndarray of bool (E, N)
        Certified by the verifier; False where it did not run.
    ran_verifier : ndarray of bool (E, N)
        Inputs handed to the verifier (correct and not certified by lipcert).
    lipcert_radius : ndarray of float64 (N,)
        lipcert's certified radius per input.
    lipcert_seconds : float
        Time of lipcert's bound and radii (all inputs, every eps: computed once).
    verifier_seconds : ndarray of float64 (E,)
        Time of the verifier on the remaining inputs, per eps.
    verifier_seconds_per_input : ndarray of float64 (E,)
        Mean verifier time per input it ran on (NaN where it ran on none).
    seconds : float
        Wall time of the :func:`combine` call.

    Answers :class:`lipcert.results.Certificates`; the verifier's part is known only on the eps
    grid, so ``certified(eps)`` and ``certified_accuracy(eps)`` take eps of :attr:`eps` only
    (:class:`~lipcert.errors.EpsNotInGridError` otherwise).
    """

    verifier: str
    norm: Norm
    eps: np.ndarray
    index: np.ndarray
    label: np.ndarray
    by_lipcert: np.ndarray
    by_verifier: np.ndarray
    ran_verifier: np.ndarray
    lipcert_radius: np.ndarray
    lipcert_seconds: float
    verifier_seconds: np.ndarray
    verifier_seconds_per_input: np.ndarray
    seconds: float

    @property
    def n(self) -> int:
        return int(self.label.shape[0])

    @property
    def by_either(self) -> np.ndarray:
        """(E, N): certified by either tool."""
        return self.by_lipcert | self.by_verifier

    @property
    def radius(self) -> np.ndarray:
        """(N,): the larger of lipcert's radius and the largest eps the verifier proved (0 if none)."""
        return np.maximum(self.lipcert_radius, largest_proven(self.eps, self.by_verifier))

    def certified(self, eps: float) -> np.ndarray:
        """(N,): certified by either tool at ``eps``, one of :attr:`eps`."""
        return self.by_either[grid_rows(self.eps, eps)[0]]

    def certified_accuracy(self, eps: EpsLike | None = None) -> np.ndarray:
        """(E,): share of inputs certified by either tool at each eps (default: every eps of the grid)."""
        rows = grid_rows(self.eps, eps)
        return self.by_either[rows].mean(axis=1) if self.n else np.zeros(len(rows))

    @property
    def provenance(self) -> np.ndarray:
        """(E, N) strings: ``"lipcert"``, the verifier's name, or ``"none"`` (lipcert first)."""
        out = np.full(self.by_either.shape, NONE, dtype=object)
        out[self.by_verifier] = self.verifier
        out[self.by_lipcert] = LIPCERT
        return out

    @property
    def total_seconds(self) -> np.ndarray:
        """(E,): lipcert's time plus the verifier's on the remaining inputs, per eps."""
        return self.lipcert_seconds + self.verifier_seconds

    def time_saved(self, verifier_alone: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
        """(E,) seconds saved against the verifier on every correctly classified input.

        ``verifier_alone`` is the measured time of that run per eps; without it, it is estimated
        as the mean per-input verifier time here times the number of correct inputs.
        """
        if verifier_alone is None:
            correct = self.ran_verifier | self.by_lipcert
            alone = np.nan_to_num(self.verifier_seconds_per_input) * correct.sum(axis=1)
        else:
            alone = np.asarray(verifier_alone, dtype=np.float64)
        return alone - self.total_seconds


def combine(model: Any, x: Any, y: Any, *, eps: float | Sequence[float], norm: str | float = 2,
            verifier: str = "crown", method: str | Sequence[str] = "combined",
            certification: Certification | None = None, input_shape: Sequence[int] | None = None,
            mean: Sequence[float] | float | None = None, std: Sequence[float] | float | None = None,
            batch_size: int = 32) -> Combination:
    """lipcert on every input, then the verifier on the inputs lipcert did not certify, at each eps.

    Parameters
    ----------
    model : path, torch.nn.Module or Network
        The model, as :func:`lipcert.load` takes it (with ``input_shape``, ``mean``, ``std``; a
        torch module's input shape defaults to that of ``x``).
    x, y : arrays (N, *input_shape), (N,)
        Raw inputs and labels.
    eps : float or list of float
        Radii in ``norm``.
    norm : 2 or "inf"
    verifier : "ibp", "crown" or "alpha-crown"
    method : str or list of str
        lipcert bound method(s); an input counts as certified by lipcert when its best radius
        over them is >= eps.
    certification : Certification, optional
        lipcert's result on exactly these inputs and norm, if already computed (then its time
        is the time of its bounds and radii).
    batch_size : int
        Inputs per verifier call.

    Returns
    -------
    Combination
    """
    from .adapters.lirpa import bounded_module, verifier_name, verify

    name, norm_name, grid = verifier_name(verifier), parse_norm(norm), check_eps(eps)
    start = time.perf_counter()
    if input_shape is None and isinstance(model, torch.nn.Module):
        input_shape = tuple(np.shape(x)[1:])
    net = as_network(model, x, input_shape=input_shape, mean=mean, std=std, verb="combine")
    if certification is None:
        certification = certify(net, x, y, norm=norm_name, method=method)
        lip_seconds = time.perf_counter() - start
    else:
        lip_seconds = float(sum(certification.timings.values()))
        labels = _as_inputs(net, x, y, None)[1]
        if certification.norm != norm_name or not np.array_equal(certification.label, labels):
            raise InvalidArgumentError(
                f"certification (norm {certification.norm}, {certification.n} inputs) does not match this call (norm "
                f"{norm_name}, {labels.size} inputs with these labels); its radii would not certify these balls")
    lm = bounded_module(model if not isinstance(model, Network) else net, input_shape=input_shape,
                        mean=mean, std=std)
    xs = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)
    n = certification.n
    by_lip = np.stack([certification.certified(e) for e in grid]) if len(grid) else np.zeros((0, n), bool)
    ran = certification.correct[None, :] & ~by_lip
    by_ver = np.zeros_like(by_lip)
    ver_seconds, per_input = np.zeros(len(grid)), np.full(len(grid), np.nan)
    for i, e in enumerate(grid):
        todo = np.flatnonzero(ran[i])
        if todo.size == 0:
            continue
        t0 = time.perf_counter()
        res = verify(lm, xs[todo], certification.label[todo], eps=[float(e)], norm=norm_name, verifier=name,
                     batch_size=batch_size, index=certification.index[todo])
        ver_seconds[i] = time.perf_counter() - t0
        per_input[i] = ver_seconds[i] / todo.size
        by_ver[i, todo] = res.verified[0]
    return Combination(name, norm_name, grid, certification.index, certification.label, by_lip, by_ver, ran,
                       certification.radius, lip_seconds, ver_seconds, per_input, time.perf_counter() - start)


@dataclass(frozen=True, eq=False)
class BatchCertificates:
    """lipcert's certificates of one batch.

    Attributes
    ----------
    radius : ndarray of float64 (B,)
        Certified radius (in ``norm``, input units; 0 when misclassified).
    correct : ndarray of bool (B,)
        Correctly classified (float64 argmax of the logits is the label).
    eps : float
        The eps of the call, the default of :meth:`certified`.
    norm : str
    bound : LipschitzBound
        The bound used (pass it back as ``bound=`` to skip recomputing it on the next batch).
    seconds : float
        Wall time of the :func:`certify_batch` call.

    Answers :class:`lipcert.results.Certificates` at any eps (the radii are known).
    """

    radius: np.ndarray
    correct: np.ndarray
    eps: float
    norm: Norm
    bound: LipschitzBound
    seconds: float

    def certified(self, eps: float | None = None) -> np.ndarray:
        """(B,): correctly classified with a certified radius >= eps (default: the call's eps)."""
        e = self.eps if eps is None else float(check_eps(eps)[0])
        return self.correct & (self.radius >= e)

    def certified_accuracy(self, eps: EpsLike | None = None) -> np.ndarray:
        """(E,): share of the batch certified at each eps (default: the call's eps)."""
        grid = check_eps(self.eps if eps is None else eps)
        if self.radius.size == 0:
            return np.zeros_like(grid)
        r = np.where(self.correct, self.radius, -np.inf)
        return (r[None, :] >= grid[:, None]).mean(axis=1)


def certify_batch(model: Any, x: Any, y: Any, *, eps: float, norm: str | float = 2, method: str = "combined",
                  bound: LipschitzBound | None = None, mean: Sequence[float] | float | None = None,
                  std: Sequence[float] | float | None = None) -> BatchCertificates:
    """lipcert's certified mask and radii of a batch, e.g. inside an auto_LiRPA verification loop.

    ``model`` is the torch module the script bounds (its input shape is read from ``x``), a
    model file or a Network; ``x`` and ``y`` are the batch (torch or numpy).  Merge with the
    script's own result: ``certified = lip.certified(eps) | verifier_certified``.
    """
    start = time.perf_counter()
    e = float(check_eps(eps)[0])
    xs = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    net = as_network(model, xs, input_shape=tuple(xs.shape[1:]), mean=mean, std=std, verb="certify_batch")
    cert = certify(net, xs, y, norm=norm, method=method, bound=bound)
    return BatchCertificates(cert.radius, cert.correct, e, cert.norm, next(iter(cert.bounds.values())),
                             time.perf_counter() - start)
