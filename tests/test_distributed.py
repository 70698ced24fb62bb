"""Sharded sweeps: the local executor and a local Ray cluster (2 workers, 2 CPUs) give the
single-process results, also when a worker is killed mid-sweep."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from mechinterp.distributed import Checkpointed, LocalExecutor, ModelSpec, RayExecutor
from mechinterp.metrics import KLDivergence, LogitDifference, Normalized
from mechinterp.models.tiny import tiny_hf_model
from mechinterp.patching import SweepSpec, patch_sweep

SPEC = ModelSpec(source=tiny_hf_model, args=("llama",), options={"device": "cpu"})


@pytest.fixture(scope="module")
def model():
    return SPEC.build()


def pairs(n: int = 10):
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(3, 98, (n, 6), generator=generator)
    corrupt = clean.clone()
    corrupt[:, 1] = torch.randint(3, 98, (n,), generator=generator)
    mask = torch.ones_like(clean)
    mask[::3, 4:] = 0  # some padded pairs: shards keep the full padded length
    correct, incorrect = torch.randint(3, 98, (2, n), generator=generator)
    metric = LogitDifference.last_position(mask, correct=correct, incorrect=incorrect, reduce="none")
    return clean, corrupt, mask, metric


def sweep(model, executor=None, metric=None, **kwargs):
    clean, corrupt, mask, default_metric = pairs()
    return patch_sweep(
        model,
        clean,
        corrupt,
        SweepSpec(kind="resid_pre"),
        metric or default_metric,
        attention_mask=mask,
        progress=False,
        executor=executor,
        **kwargs,
    )


def assert_same(got, expected):
    assert got.axes == expected.axes and got.labels == expected.labels
    for name in ("values", "base", "source"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), rtol=1e-6, atol=1e-6)


def test_local_shards_equal_the_single_process_run(model):
    expected = sweep(model)
    assert_same(sweep(model, LocalExecutor(pairs_per_shard=3)), expected)
    assert sweep(model, LocalExecutor()).values.equal(expected.values)  # one shard: the same run
    clean, _, mask, metric = pairs()
    with torch.no_grad():
        reference = model(clean, attention_mask=mask)[torch.arange(10), metric.positions]
    for nested in (
        Normalized(metric=metric, clean=torch.linspace(1, 2, 10), corrupted=torch.zeros(10)),
        KLDivergence(metric.positions, reference),
    ):
        assert_same(sweep(model, LocalExecutor(pairs_per_shard=4), nested), sweep(model, metric=nested))


class CountingExecutor:
    """A ``LocalExecutor`` that counts the shards it runs."""

    def __init__(self):
        self.inner, self.ran = LocalExecutor(pairs_per_shard=3), []

    def shard_size(self, n_items: int) -> int:
        return self.inner.shard_size(n_items)

    def map(self, model, task, shards, **kwargs):
        self.ran.append(len(shards))
        return self.inner.map(model, task, shards, **kwargs)


def test_checkpointed_shards_are_not_run_again(model, tmp_path):
    counting = CountingExecutor()
    expected = sweep(model, Checkpointed(counting, tmp_path))
    files = sorted(tmp_path.glob("*.safetensors"))
    assert counting.ran == [4] and len(files) == 4
    files[1].unlink()  # as if the run was killed before this shard finished
    assert_same(sweep(model, Checkpointed(counting, tmp_path)), expected)
    assert counting.ran == [4, 1]
    sweep(model, Checkpointed(counting, tmp_path), direction="noise")  # another sweep: other keys
    assert counting.ran == [4, 1, 4]


def test_unsplittable_sweeps_raise(model):
    with pytest.raises(ValueError, match="positional metric"):
        sweep(model, LocalExecutor(), metric=lambda logits: logits[:, -1, 5])
    with pytest.raises(ValueError, match="ablation='mean'"):
        sweep(model, LocalExecutor(), ablation="mean")


@dataclass(frozen=True)
class KillFirstAttempt:
    """A task wrapper: the first attempt at shard ``victim`` kills its own actor."""

    task: object
    victim: torch.Tensor
    marker: Path

    def __call__(self, model, shard):
        import ray

        if torch.equal(shard.clean, self.victim) and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            ray.kill(ray.get_runtime_context().current_actor)
        return self.task(model, shard)


class KillingExecutor:
    """Runs on a ``RayExecutor``, wrapping the task so one worker dies mid-sweep."""

    def __init__(self, executor: RayExecutor, victim: torch.Tensor, marker: Path):
        self.executor, self.victim, self.marker = executor, victim, marker

    def shard_size(self, n_items: int) -> int:
        return self.executor.shard_size(n_items)

    def map(self, model, task, shards, **kwargs):
        return self.executor.map(model, KillFirstAttempt(task, self.victim, self.marker), shards, **kwargs)


@pytest.fixture(scope="module")
def ray_executor():
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    with RayExecutor(SPEC, address="local", num_workers=2, pairs_per_shard=2) as executor:
        executor.start()
        assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")  # private to this machine
        yield executor


def test_ray_equals_the_single_process_run(model, ray_executor):
    result = sweep(model, ray_executor)
    assert result.metadata["shards"] == 5
    assert_same(result, sweep(model))
    # the same shards in this process give bit-identical tensors
    assert sweep(model, LocalExecutor(pairs_per_shard=2)).values.equal(result.values)


def test_a_killed_worker_is_replaced_and_the_results_are_unchanged(model, ray_executor, tmp_path):
    clean = pairs()[0]
    marker = tmp_path / "killed"
    restarts = ray_executor.restarts
    result = sweep(model, KillingExecutor(ray_executor, clean[4:6], marker))
    assert marker.exists() and ray_executor.restarts == restarts + 1
    assert_same(result, sweep(model))


def test_workers_refuse_a_model_other_than_their_spec(ray_executor):
    other = ModelSpec(source=tiny_hf_model, args=("llama",), kwargs={"seed": 1}, options={"device": "cpu"})
    with pytest.raises(ValueError, match="give RayExecutor the spec"):
        sweep(other.build(), ray_executor)
