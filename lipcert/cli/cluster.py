"""Options ``--workers N`` / ``--scheduler ADDRESS``: the Dask cluster a run computes its radii on."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--workers", type=int, default=None, metavar="N",
                       help="compute the radii on a Dask LocalCluster of N worker processes on this machine "
                            "(needs the dask extra)")
    group.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="compute the radii on the Dask cluster of this scheduler, e.g. tcp://host:8786")


@contextmanager
def cluster_client(args: argparse.Namespace) -> Iterator[Any]:
    """The Dask client of ``--workers``/``--scheduler`` (None without them), closed at the end of the run.

    Connects first, so an unreachable scheduler fails in one line before any model is loaded."""
    workers, scheduler = getattr(args, "workers", None), getattr(args, "scheduler", None)
    if workers is None and scheduler is None:
        yield None
        return
    from ..distributed import connect

    client = connect(workers=workers, scheduler=scheduler)
    n = len(client.nthreads())
    print(f"dask: {n} workers at {client.scheduler.address}, dashboard {client.dashboard_link}", file=sys.stderr)
    try:
        yield client
    finally:
        cluster = client.cluster if workers is not None else None
        client.close()
        if cluster is not None:
            cluster.close()
