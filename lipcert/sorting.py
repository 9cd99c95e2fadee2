"""MaxMin, GroupSort-k, FullSort and Householder as orthogonal maps around |.| (docs/decisions.md 19, 20).

With H = [[1, 1], [1, -1]] / sqrt(2), a comparator sends (a, b) to (min, max) exactly as

    (u, v) = ((a + b) / sqrt(2), (b - a) / sqrt(2)),   min = (u - |v|) / sqrt(2),   max = (u + |v|) / sqrt(2),

so one stage of disjoint comparators is T (orthogonal) -> |.| on the v neurons, identity on the others
(:func:`~lipcert.activations.abs_or_identity`) -> B = T^T.  GroupSort-k is its sorting network
(Batcher's odd-even merge sort: 3 stages for k = 4), each stage one such layer; FullSort is
GroupSort over all channels; the Householder activation z -> z if n^T z <= 0 else (I - 2 n n^T) z is
Q diag(-|.|, I) Q^T with Q = [n, n_perp].  Every map here acts on the channel axis; a
:class:`Stage` holds C x C matrices and the channel mask of its |.| neurons.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .activations import abs_or_identity
from .errors import ShapeMismatchError
from .network import ArrayLike, Network

Comparator = tuple[int, int]
"""(lo, hi): the minimum of the two channels goes to ``lo``, the maximum to ``hi``."""


@dataclass(frozen=True)
class Stage:
    """One layer of the rewrite on C channels: x -> back @ phi(to @ x), phi = |.| where ``mask`` else identity."""

    to: torch.Tensor
    mask: tuple[bool, ...]
    back: torch.Tensor


def batcher_stages(k: int) -> list[list[Comparator]]:
    """Batcher's odd-even merge sort for k inputs, ascending, as parallel stages of disjoint comparators."""
    if k < 1:
        raise ShapeMismatchError(f"a sorting network needs at least one input, got {k}")
    pairs: list[Comparator] = []
    p = 1
    while p < k:
        step = p
        while step >= 1:
            for j in range(step % p, k - step, 2 * step):
                for i in range(min(step, k - j - step)):
                    if (i + j) // (2 * p) == (i + j + step) // (2 * p):
                        pairs.append((i + j, i + j + step))
            step //= 2
        p *= 2
    return pack(pairs)


def pack(pairs: Sequence[Comparator]) -> list[list[Comparator]]:
    """Comparators in order, each put in the first stage after every earlier one sharing a channel."""
    last: dict[int, int] = {}
    stages: list[list[Comparator]] = []
    for lo, hi in pairs:
        s = max(last.get(lo, -1), last.get(hi, -1)) + 1
        if s == len(stages):
            stages.append([])
        stages[s].append((lo, hi))
        last[lo] = last[hi] = s
    return stages


def comparator_stage(channels: int, comparators: Sequence[Comparator]) -> Stage:
    """The orthogonal T, the mask and B = T^T of one stage of disjoint comparators."""
    to = torch.eye(channels, dtype=torch.float64)
    mask = [False] * channels
    r = 1 / math.sqrt(2)
    for lo, hi in comparators:
        to[lo, lo], to[lo, hi] = r, r           # u, kept at lo
        to[hi, lo], to[hi, hi] = -r, r          # v = (z_hi - z_lo) / sqrt(2), |.| at hi
        mask[hi] = True
    return Stage(to, tuple(mask), to.T.contiguous())


def groupsort_stages(channels: int, group: int | None, *, descending: bool = False) -> list[Stage]:
    """GroupSort on consecutive groups of ``group`` channels, ascending (FullSort for None)."""
    size = channels if group is None else group
    if size < 1 or channels % size:
        raise ShapeMismatchError(f"GroupSort with group size {size} needs a channel count divisible by it, got "
                                 f"{channels}")
    per_group = batcher_stages(size)
    if descending:  # sorting the mirrored positions ascending
        per_group = [[(size - 1 - lo, size - 1 - hi) for lo, hi in stage] for stage in per_group]
    return [comparator_stage(channels, [(g + lo, g + hi) for g in range(0, channels, size) for lo, hi in stage])
            for stage in per_group]


def maxmin_halves_stages(channels: int) -> list[Stage]:
    """orthogonium's MaxMin: halves (a, b) -> (max(a, b), min(a, b))."""
    if channels % 2:
        raise ShapeMismatchError(f"MaxMin splits the channels in halves; got an odd count {channels}")
    half = channels // 2
    return [comparator_stage(channels, [(half + i, i) for i in range(half)])]


def householder_stages(theta: torch.Tensor) -> list[Stage]:
    """deel-torchlip's HouseHolder on 2 len(theta) channels: halves (x, y), n = (sin(t/2), -cos(t/2)) per pair."""
    half = theta.numel()
    channels = 2 * half
    to = torch.zeros(channels, channels, dtype=torch.float64)
    back = torch.zeros_like(to)
    t = theta.detach().double().reshape(-1)
    s, c = torch.sin(t / 2), torch.cos(t / 2)
    idx = torch.arange(half)
    to[idx, idx], to[idx, idx + half] = s, -c                 # n^T z, |.| on these
    to[idx + half, idx], to[idx + half, idx + half] = c, s    # n_perp^T z
    back[idx, idx], back[idx + half, idx] = -s, c             # column -n
    back[idx, idx + half], back[idx + half, idx + half] = c, s  # column n_perp
    return [Stage(to, tuple([True] * half + [False] * half), back)]


def spread(mask: Sequence[bool], positions: int) -> list[bool]:
    """A channel mask repeated over ``positions`` spatial positions (channel-major flatten order)."""
    return [m for m in mask for _ in range(positions)]


def chain(weights: Sequence[ArrayLike], biases: Sequence[ArrayLike | None] | None,
          stages: Sequence[Sequence[Stage]], **kwargs: object) -> Network:
    """The Network x -> W_L s_{L-1}(... s_1(W_1 x + b_1) ...) + b_L for stage lists s_k (flat layers).

    Each hidden activation s_k is expanded into its stages: T_1 folds into W_k, B_s T_{s+1} become
    layers of their own, B_last folds into W_{k+1}.
    """
    ws = [torch.as_tensor(w, dtype=torch.float64) for w in weights]
    bs = [None if b is None else torch.as_tensor(b, dtype=torch.float64) for b in (biases or [None] * len(ws))]
    if len(stages) != len(ws) - 1:
        raise ShapeMismatchError(f"{len(ws)} weight matrices need {len(ws) - 1} activations, got {len(stages)}")
    out_w: list[torch.Tensor] = []
    out_b: list[torch.Tensor | None] = []
    acts = []
    carry = None  # B_last of the previous activation, folded into the next weight
    for k, w in enumerate(ws):
        b = bs[k]
        if carry is not None:
            w = w @ carry
        if k == len(ws) - 1:
            out_w.append(w)
            out_b.append(b)
            break
        if not stages[k]:
            raise ShapeMismatchError(f"hidden activation {k + 1} has no stages (a group of one channel is the "
                                     "identity: leave the activation out)")
        first = True
        for stage in stages[k]:
            if first:
                out_w.append(stage.to @ w)
                out_b.append(None if b is None else stage.to @ b)
                first = False
            else:
                out_w.append(stage.to @ carry)  # type: ignore[operator]
                out_b.append(None)
            acts.append(abs_or_identity(stage.mask))
            carry = stage.back
    return Network.from_weights(out_w, out_b, acts, **kwargs)  # type: ignore[arg-type]
