"""Executors: where the shards of a heavy computation run.

A heavy entry point (``patch_sweep(..., executor=...)``) splits its work into independent
shards (prompt pairs), hands the executor a task ``task(model, shard) -> result`` and the
shards, and combines the results in shard order, so the answer does not depend on where
shards ran. The protocol they implement, ``Executor``, is defined in the patching layer
(``mechinterp.patching.shards``), which never imports this package. ``LocalExecutor``
runs the shards in this process on the given model; ``RayExecutor`` runs them on Ray
actors, each holding one model replica built from a ``ModelSpec`` (on its own GPU with
``num_gpus_per_worker=1``, else on CPU cores).

Faults: when an actor dies (killed, out of memory, node lost) its shard goes back in the
queue and runs on a fresh actor; shards already finished are kept. Progress is one bar
over prompt pairs, however many workers run.

A Ray cluster has no authentication of its own: anyone who can reach its ports can run
code on it. ``address="local"`` therefore binds it to 127.0.0.1 with the dashboard off;
put a multi-machine cluster on a private network.

Example:
    >>> with RayExecutor(ModelSpec(source="smollm2-135m"), num_workers=2) as executor:
    ...     result = patch_sweep(model, clean, corrupt, spec, metric, executor=executor)
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from mechinterp.distributed.spec import ModelSpec, fingerprint
from mechinterp.patching.shards import Result, Shard, Task


@dataclass(frozen=True, kw_only=True)
class LocalExecutor:
    """Runs every shard in this process, one after the other, on the model it is given.

    ``pairs_per_shard=None`` (default) makes one shard: exactly the unsharded computation.

    Example:
        >>> patch_sweep(model, clean, corrupt, spec, metric, executor=LocalExecutor(pairs_per_shard=8))
    """

    pairs_per_shard: int | None = None

    def shard_size(self, n_items: int) -> int:
        return _checked_shard_size(self.pairs_per_shard, n_items, default=n_items)

    def map(
        self,
        model,
        task: Task,
        shards: Sequence[Shard],
        *,
        sizes: Sequence[int],
        progress: bool,
        description: str,
        on_result: Callable[[int, Result], None] | None = None,
    ) -> list[Result]:
        results = []
        with tqdm(total=sum(sizes), desc=description, unit="pair", disable=not progress) as bar:
            for shard, size in zip(shards, sizes, strict=True):
                results.append(task(model, shard))
                if on_result is not None:
                    on_result(len(results) - 1, results[-1])
                bar.update(size)
        return results


class _Replica:
    """A Ray actor's state: one model replica (made into an actor by ``RayExecutor``)."""

    def __init__(self, spec: ModelSpec, torch_threads: int | None):
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        self.model = spec.build().eval()

    def fingerprint(self) -> tuple[str, float]:
        return fingerprint(self.model)

    def run(self, task: Task, shard: Any) -> Any:
        with torch.no_grad():
            return task(self.model, shard)


class RayExecutor:
    """Runs shards on Ray actors, each holding one model replica built from ``spec``.

    Args:
        spec: how each worker builds its model (``ModelSpec``); it must build the same
            model the entry point is called with (checked by a weight fingerprint).
        address: ``"local"`` starts a one-machine cluster bound to 127.0.0.1 with the
            dashboard off (stopped by ``close``); ``"auto"`` joins the cluster this machine
            belongs to; anything else is a cluster address (``"10.0.0.5:6379"``,
            ``"ray://10.0.0.5:10001"``). An already initialised Ray session is used as is.
        num_workers: actors (model replicas).
        num_cpus_per_worker, num_gpus_per_worker: Ray resources each actor reserves; with
            ``num_gpus_per_worker=1`` every replica has a GPU of its own.
        torch_threads: torch threads per actor; default (``None``): as many as this process
            uses, so a CPU matrix product splits its work the same way in both and the
            results are bit-identical to a single-process run (with other thread counts they
            agree to float rounding).
        pairs_per_shard: prompt pairs per shard; default: enough shards for two per worker
            (smaller shards balance better and lose less to a killed worker).
        max_retries: times one shard is re-run after its actor died before giving up.

    Use it as a context manager (or call ``close``) to stop the actors.
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        address: str = "local",
        num_workers: int = 2,
        num_cpus_per_worker: int | float = 1,
        num_gpus_per_worker: int | float = 0,
        torch_threads: int | None = None,
        pairs_per_shard: int | None = None,
        max_retries: int = 3,
    ):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.spec = spec
        self.address = address
        self.num_workers = num_workers
        self.num_cpus_per_worker = num_cpus_per_worker
        self.num_gpus_per_worker = num_gpus_per_worker
        self.torch_threads = torch.get_num_threads() if torch_threads is None else torch_threads
        self.pairs_per_shard = pairs_per_shard
        self.max_retries = max_retries
        self.actors: list[Any] = []
        self.restarts = 0  # actors replaced after dying
        self._started_ray = False
        self._expected: tuple[str, float] | None = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Connect to (or start) the cluster and create the actors; ``map`` does this on
        first use."""
        ray = _import_ray()
        if not ray.is_initialized():
            arguments = ray_init_arguments(self.address, self.num_workers * self.num_cpus_per_worker)
            with _loopback_only(ray, self.address == "local"):
                ray.init(**arguments)
            self._started_ray = True
        while len(self.actors) < self.num_workers:
            self.actors.append(self._new_actor())

    def close(self) -> None:
        """Stop the actors (and the local cluster if this executor started it)."""
        if not self.actors and not self._started_ray:
            return
        ray = _import_ray()
        try:
            for actor in self.actors:
                ray.kill(actor)
        finally:
            self.actors = []
            if self._started_ray:
                ray.shutdown()
                self._started_ray = False

    def _new_actor(self):
        ray = _import_ray()
        remote = ray.remote(num_cpus=self.num_cpus_per_worker, num_gpus=self.num_gpus_per_worker)(_Replica)
        return remote.remote(self.spec, self.torch_threads)

    # ------------------------------------------------------------------ running
    def shard_size(self, n_items: int) -> int:
        return _checked_shard_size(
            self.pairs_per_shard, n_items, default=max(1, math.ceil(n_items / (2 * self.num_workers)))
        )

    def map(
        self,
        model,
        task: Task,
        shards: Sequence[Shard],
        *,
        sizes: Sequence[int],
        progress: bool,
        description: str,
        on_result: Callable[[int, Result], None] | None = None,
    ) -> list[Result]:
        ray = _import_ray()
        self.start()
        self._check_replicas(ray, model)
        results: list[Any] = [None] * len(shards)
        failures = [0] * len(shards)
        queue = deque(range(len(shards)))
        idle = list(self.actors)
        running: dict[Any, tuple[int, Any]] = {}
        with tqdm(total=sum(sizes), desc=description, unit="pair", disable=not progress) as bar:
            while queue or running:
                while queue and idle:
                    index, actor = queue.popleft(), idle.pop()
                    running[actor.run.remote(task, shards[index])] = (index, actor)
                (ref,), _ = ray.wait(list(running), num_returns=1)
                index, actor = running.pop(ref)
                try:
                    results[index] = ray.get(ref)
                except ray.exceptions.RayActorError as error:
                    failures[index] += 1
                    if failures[index] > self.max_retries:
                        raise RuntimeError(
                            f"shard {index} lost its Ray actor {failures[index]} times; giving up"
                        ) from error
                    queue.appendleft(index)  # finished shards are kept; only this one reruns
                    idle.append(self._replace(actor))
                    continue
                except ray.exceptions.RayTaskError as error:  # the task itself raised: not a fault
                    raise error.as_instanceof_cause() from None
                if on_result is not None:
                    on_result(index, results[index])
                bar.update(sizes[index])
                idle.append(actor)
        return results

    def _replace(self, dead):
        fresh = self._new_actor()
        self.actors[self.actors.index(dead)] = fresh
        self.restarts += 1
        return fresh

    def _check_replicas(self, ray, model) -> None:
        """Every actor built the model the caller holds (same name and weight fingerprint)."""
        expected = fingerprint(model)
        if expected == self._expected:
            return
        for got in ray.get([actor.fingerprint.remote() for actor in self.actors]):
            if got != expected:
                raise ValueError(
                    f"the Ray workers built {got[0]!r} (weight fingerprint {got[1]!r}) from {self.spec}, "
                    f"but the model passed in is {expected[0]!r} ({expected[1]!r}); "
                    "give RayExecutor the spec of the model you call it with"
                )
        self._expected = expected


def ray_init_arguments(address: str, num_cpus: int | float) -> dict[str, Any]:
    """``ray.init`` keywords for an address: ``"local"`` starts a private one-machine
    cluster (127.0.0.1, no dashboard, ``num_cpus`` CPUs); ``"auto"`` or an address joins
    a running one."""
    if address == "local":
        return {
            "num_cpus": max(1, math.ceil(num_cpus)),
            "include_dashboard": False,
            "_node_ip_address": "127.0.0.1",
            "configure_logging": False,
        }
    return {"address": address}


@contextmanager
def _loopback_only(ray, active: bool) -> Iterator[None]:
    """Keep a local cluster on 127.0.0.1. Ray on Linux replaces a loopback node address
    by the machine's network address unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
    (read by the cluster processes from the environment, and by this process from
    ``ray_constants`` at import); both are set while the cluster starts."""
    if not active:
        yield
        return
    constants = ray._private.ray_constants
    saved = (os.environ.get(_SINGLE_NODE_VARIABLE), constants.ENABLE_RAY_CLUSTER)
    os.environ[_SINGLE_NODE_VARIABLE] = "0"
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = saved[1]
        if saved[0] is None:
            os.environ.pop(_SINGLE_NODE_VARIABLE, None)
        else:
            os.environ[_SINGLE_NODE_VARIABLE] = saved[0]


_SINGLE_NODE_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _checked_shard_size(requested: int | None, n_items: int, *, default: int) -> int:
    if requested is None:
        return max(1, default)
    if requested < 1:
        raise ValueError(f"pairs_per_shard must be >= 1, got {requested}")
    return requested


def _import_ray():
    try:
        import ray
    except ImportError as error:
        raise ImportError(
            "RayExecutor needs Ray: pip install 'mechinterp[distributed]' (or pip install 'ray==2.60.*')"
        ) from error
    return ray
