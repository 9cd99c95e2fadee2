"""Certification on a Dask cluster: the run's shared state sent once, batches and shards of inputs as tasks.

:func:`connect` opens a :class:`distributed.Client` (a ``LocalCluster`` of worker processes on this
machine, or an existing cluster by scheduler address) and fails in one line when the scheduler
cannot be reached.  :func:`sharded_batches` runs the batches of :func:`lipcert.certify` on it: the
job (network, pairwise constants of the global bounds, options) is scattered to every worker once;
every records batch is one forward task on exactly the inputs of the serial batch, so its bits are
those of the serial run; local radii, which depend on their own input alone, are split into shards
of a few inputs, sent with their slice of the forward result when it is back.  Batches come back in
order, for the caller alone to write.  A worker that dies loses nothing: the scheduler reruns its
tasks elsewhere (their inputs travel inside the tasks, the job has a copy on every worker), and a
task the cluster cancels is sent again from the driver.
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
"""Most inputs in one local-radius task: a local radius costs 0.1-30 s, a task about 5 ms of overhead."""
RESUBMITS = 3
"""Times a task the cluster cancelled (lost with its workers) is sent again before :class:`ClusterError`."""

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


def shard_size(n: int, workers: int) -> int:
    """Inputs per local-radius task: at least four tasks per worker per batch, at most :data:`MAX_SHARD`."""
    return max(1, min(MAX_SHARD, math.ceil(n / (4 * max(workers, 1)))))


def sharded_batches(client: Any, job: Any, forward: Forward, local: Local | None, batches: Sequence[Batch],
                    progress: Callable[[int], Any]) -> Iterator[dict[str, np.ndarray]]:
    """The results of ``forward`` (and ``local``, as ``radius:local`` and ``local_seconds``) per batch, in order.

    ``job`` is scattered to every worker once; every task carries its own inputs (a batch, or a shard
    of a batch with its slice of the forward result, sent when that result is back), so no task
    depends on another and the scheduler can rerun any of them on any worker.  A task the cluster
    cancels (its worker and every copy of its inputs gone) is sent again, up to :data:`RESUBMITS`
    times.  ``progress`` is called with the number of inputs of every finished task (local shards
    when ``local`` is given, else whole batches).
    """
    from distributed import KilledWorker, as_completed
    from distributed.client import FutureCancelledError

    workers = max(len(client.nthreads()), 1)
    run = uuid.uuid4().hex[:12]
    shared = [client.scatter(job, broadcast=True, hash=False)]
    specs: dict[Any, tuple[tuple[int, int, int], Callable[..., Any], tuple[Any, ...]]] = {}
    sent: dict[tuple[int, int, int], int] = {}
    pending = as_completed()

    def submit(tag: tuple[int, int, int], fn: Callable[..., Any], *args: Any) -> None:
        """Send task ``tag`` = (batch, lo, hi; hi < 0 for a forward task) with the shared job first."""
        sent[tag] = sent.get(tag, 0) + 1
        kind = "forward" if tag[2] < 0 else "local"
        f = client.submit(fn, shared[0], *args, pure=False, key=f"lipcert-{run}-{kind}-{tag[0]}-{tag[1]}-{sent[tag]}")
        specs[f] = (tag, fn, args)
        pending.add(f)

    for b, (xb, lab, ids) in enumerate(batches):
        submit((b, 0, -1), forward, xb.clone(), lab, ids)
    steps = [shard_size(len(lab), workers) for _, lab, _ in batches]
    missing = {b: 1 + (math.ceil(len(lab) / steps[b]) if local is not None else 0)
               for b, (_, lab, _) in enumerate(batches)}
    results: dict[int, dict[str, np.ndarray]] = {}
    following = 0
    try:
        for future in pending:
            tag, fn, args = specs.pop(future)
            try:
                value = future.result()
            except FutureCancelledError as exc:
                if sent[tag] > RESUBMITS:
                    raise ClusterError(f"the Dask cluster lost task {future.key} {sent[tag]} times ({exc}); what "
                                       "finished before is in the records, continue with --resume") from None
                if shared[0].status != "finished":  # every copy of the job was lost with its workers
                    shared[0] = client.scatter(job, broadcast=True, hash=False)
                submit(tag, fn, *args)
                continue
            except KilledWorker as exc:
                raise ClusterError(f"{exc}; what finished before is in the records, continue with --resume") from None
            future.release()
            b, lo, hi = tag
            batch = results.setdefault(b, {})
            if hi < 0:
                batch.update(value)
                if local is None:
                    progress(len(value["label"]))
                else:
                    xb = batches[b][0]
                    for start in range(0, len(value["label"]), steps[b]):
                        stop = min(start + steps[b], len(value["label"]))
                        part = {k: v[start:stop] for k, v in value.items()}
                        submit((b, start, stop), local, xb[start:stop].clone(), part)
            else:
                batch[f"local:{lo}"] = value
                progress(hi - lo)
            missing[b] -= 1
            while following < len(batches) and missing[following] == 0:
                yield _assemble(results.pop(following))
                following += 1
    finally:
        for future in specs:
            future.cancel()


def _assemble(parts: dict[str, Any]) -> dict[str, np.ndarray]:
    """A forward batch with its local shards (keys ``local:<lo>``) joined into ``radius:local``, ``local_seconds``."""
    shards = sorted((int(k.split(":")[1]), parts.pop(k)) for k in [k for k in parts if k.startswith("local:")])
    if shards:
        parts[f"radius:{LOCAL_METHOD}"] = np.concatenate([r for _, (r, _) in shards])
        parts["local_seconds"] = np.concatenate([s for _, (_, s) in shards])
    return parts
