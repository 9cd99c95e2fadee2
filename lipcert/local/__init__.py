"""Local (per-input) Lipschitz constants and certified radii.

:mod:`.bound` bounds a network's Lipschitz constants on one ball (:func:`local_bound`),
:mod:`.margin` optimizes the multipliers of one margin on it (:func:`optimized_margin`), and
:mod:`.radius` searches the largest radius that a ball's own constants certify (:func:`local_radius`), and
:mod:`.graph` extends the bounds to residual graphs (:func:`graph_local_bound`).
"""

from .bound import DAMPINGS, LOCAL_DAMPINGS, LOCAL_RULES, Intervals, LocalBound, local_bound
from .graph import graph_local_bound
from .margin import DEFAULT_ITERATIONS, optimized_margin
from .radius import DEFAULT_RTOL, LOCAL_METHOD, LocalRadius, local_radii, local_radius

__all__ = ["DAMPINGS", "DEFAULT_ITERATIONS", "DEFAULT_RTOL", "LOCAL_DAMPINGS", "LOCAL_METHOD", "LOCAL_RULES",
           "Intervals", "LocalBound", "LocalRadius", "graph_local_bound", "local_bound", "local_radii", "local_radius", "optimized_margin"]
