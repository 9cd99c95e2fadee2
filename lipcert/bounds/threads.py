"""Torch's intra-op thread count for computations on small matrices (docs/decisions.md 39).

Eigendecompositions and Cholesky factorizations of matrices a few hundred wide gain little from a second
thread, and on shared cores they lose a great deal: torch's threads spin-wait for each other, and
``eigvalsh`` of a 256 x 256 matrix took 100 ms with 2 threads against 5.6 ms with 1 on a loaded 2-core
machine (``cholesky_ex`` 20 ms against 1.6 ms).  The residual-block recursion runs thousands of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

SMALL_WIDTH = 1024
"""Widest matrix (rows or columns) for which :func:`small_matrix_threads` uses one thread."""


@contextlib.contextmanager
def small_matrix_threads(width: int) -> Iterator[None]:
    """Run the block with one torch thread when ``width`` <= :data:`SMALL_WIDTH` (restored after)."""
    old = torch.get_num_threads()
    single = width <= SMALL_WIDTH and old > 1
    if single:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if single:
            torch.set_num_threads(old)
