"""Certification on a Dask cluster: the run's shared state sent once, batches and shards of inputs as tasks.

:func:`connect` opens a :class:`distributed.Client` (a ``LocalCluster`` of worker processes on this
machine, or an existing cluster by scheduler address) and fails in one line when the scheduler
cannot be reached.  :func:`sharded_batches` runs the batches of :func:`lipcert.certify` on it: the
job (network, pairwise constants of the global bounds, options) is scattered to every worker once;
every records batch is one forward task on exactly the inputs of the serial batch, so its bits are
those of the serial run; local radii, which depend on their own input alone, are split into shards
of a few inputs that wait on their batch's forward task.  Batches come back in order, for the
caller alone to write.  A worker that dies loses nothing: the scheduler reruns its tasks elsewhere
(their inputs travel inside the tasks, the job has a copy on every worker).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .errors import ClusterError, require_extra
from .local.radius import LOCAL_METHOD

CONNECT_TIMEOUT = 10.0
"""Seconds to wait for a scheduler before :class:`~lipcert.errors.ClusterError`."""
MAX_SHARD = 4
"""Most inputs in one local-radius task: a local radius costs 0.1-30 s, a task about 10 ms of overhead."""

Batch = tuple[torch.Tensor, np.ndarray, np.ndarray]
Forward = Callable[[Any, torch.Tensor, np.ndarray, np.ndarray], dict[str, np.ndarray]]
Local = Callable[[Any, torch.Tensor, Mapping[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]


def connect(workers: int | None = None, scheduler: str | None = None) -> Any:
    """A Dask client: a ``LocalCluster`` of ``workers`` single-threaded processes, or the cluster at ``scheduler``.

    Raises :class:`~lipcert.errors.ClusterError` (one line) when the scheduler does not answer within
    :data:`CONNECT_TIMEOUT` seconds or the local cluster cannot start, before anything is computed.
    """
    require_extra("distributed", "dask")
    from distributed import Client, LocalCluster

    if (workers is None) == (scheduler is None):
        raise ClusterError("give either a number of local workers or a scheduler address, not both or neither")
    if scheduler is not None:
        try:
            return Client(scheduler, timeout=CONNECT_TIMEOUT)
        except Exception as exc:  # timeouts, refused connections, malformed addresses: one line each
            first = str(exc).splitlines()[0] if str(exc) else f"{type(exc).__name__} (not a scheduler address?)"
            raise ClusterError(f"cannot reach the Dask scheduler at {scheduler}: {first}") from None
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ClusterError(f"the number of workers must be a positive integer, got {workers!r}")
    try:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0")
    except (OSError, RuntimeError) as exc:
        raise ClusterError(f"cannot start a local Dask cluster of {workers} workers: {exc}") from None
    client = Client(cluster)
    client.wait_for_workers(workers)
    return client


def _local_shard(local: Local, job: Any, batch: Mapping[str, np.ndarray], xb: torch.Tensor,
                 lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """``local`` on the inputs lo:hi of a forward batch (a task; its result goes back to the driver)."""
    return local(job, xb, {k: v[lo:hi] for k, v in batch.items()})


def shard_size(n: int, workers: int) -> int:
    """Inputs per local-radius task: at least four tasks per worker per batch, at most :data:`MAX_SHARD`."""
    return max(1, min(MAX_SHARD, math.ceil(n / (4 * max(workers, 1)))))


def sharded_batches(client: Any, job: Any, forward: Forward, local: Local | None, batches: Sequence[Batch],
                    progress: Callable[[int], Any]) -> Iterator[dict[str, np.ndarray]]:
    """The results of ``forward`` (and ``local``, as ``radius:local`` and ``local_seconds``) per batch, in order.

    ``job`` is scattered to every worker once; ``progress`` is called with the number of inputs of
    every finished task (local shards when ``local`` is given, else whole batches).
    """
    from distributed import as_completed

    workers = max(len(client.nthreads()), 1)
    run = uuid.uuid4().hex[:12]
    shared = client.scatter(job, broadcast=True, hash=False)
    owner: dict[Any, tuple[int, int, int]] = {}  # future -> (batch, lo, hi); hi < 0 marks a forward task
    pending = as_completed()
    for b, (xb, lab, ids) in enumerate(batches):
        fwd = client.submit(forward, shared, xb.clone(), lab, ids, pure=False, key=f"lipcert-{run}-forward-{b}")
        owner[fwd] = (b, 0, -1)
        pending.add(fwd)
        step = shard_size(len(lab), workers)
        for lo in range(0, len(lab) if local is not None else 0, step):
            hi = min(lo + step, len(lab))
            f = client.submit(_local_shard, local, shared, fwd, xb[lo:hi].clone(), lo, hi, pure=False,
                              key=f"lipcert-{run}-local-{b}-{lo}")
            owner[f] = (b, lo, hi)
            pending.add(f)
    results: dict[int, dict[str, np.ndarray]] = {}
    missing = {b: 1 + (math.ceil(len(lab) / shard_size(len(lab), workers)) if local is not None else 0)
               for b, (_, lab, _) in enumerate(batches)}
    following = 0
    try:
        for future in pending:
            b, lo, hi = owner.pop(future)
            value = _result(future)
            future.release()
            batch = results.setdefault(b, {})
            if hi < 0:
                batch.update(value)
                if local is None:
                    progress(len(value["label"]))
            else:
                batch[f"local:{lo}"] = value
                progress(hi - lo)
            missing[b] -= 1
            while following < len(batches) and missing[following] == 0:
                yield _assemble(results.pop(following))
                following += 1
    finally:
        for future in owner:
            future.cancel()


def _result(future: Any) -> Any:
    """The value of a finished task; a task that killed every worker it ran on is a :class:`ClusterError`."""
    from distributed import KilledWorker
    from distributed.client import FutureCancelledError

    try:
        return future.result()
    except (KilledWorker, FutureCancelledError) as exc:
        raise ClusterError(f"the Dask cluster lost task {future.key}: {exc}; what finished before is in the "
                           "records, continue with --resume (resume=True)") from None


def _assemble(parts: dict[str, Any]) -> dict[str, np.ndarray]:
    """A forward batch with its local shards (keys ``local:<lo>``) joined into ``radius:local``, ``local_seconds``."""
    shards = sorted((int(k.split(":")[1]), parts.pop(k)) for k in [k for k in parts if k.startswith("local:")])
    if shards:
        parts[f"radius:{LOCAL_METHOD}"] = np.concatenate([r for _, (r, _) in shards])
        parts["local_seconds"] = np.concatenate([s for _, (_, s) in shards])
    return parts
