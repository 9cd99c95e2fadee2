"""Options ``--workers N`` / ``--scheduler ADDRESS``: the Dask cluster a run computes its radii on."""

from __future__ import annotations

import argparse
import logging
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
        if workers is None:
            client.close()
        else:
            _close_quietly(client)


def _quiet() -> None:
    logging.getLogger("distributed").setLevel(logging.CRITICAL)


def _close_quietly(client: Any) -> None:
    """Close a LocalCluster this run started without the heartbeat and 'still alive, killing' messages its
    workers and nannies log while they are taken down (the results are in by then)."""
    cluster = client.cluster
    try:
        client.run(_quiet)
    except Exception:  # a worker already gone has nothing left to say
        pass
    _quiet()
    client.close()
    cluster.close()
