"""Probing: datasets, activation collection, batched probes, controls, interventions."""

from __future__ import annotations

import json

import pytest
import torch

from mechinterp.plotting import probe_accuracy
from mechinterp.probing import (
    ProbeDataset,
    ProbeResult,
    collect_activations,
    direction_effect,
    entity_category,
    load_probe_dataset,
    mass_mean_probe,
    number_agreement,
    roc_auc,
    train_probes,
)
from mechinterp.probing.collect import Activations
from mechinterp.probing.probes import split_indices


def synthetic(n: int = 300, n_layers: int = 3, d: int = 16, seed: int = 0) -> Activations:
    """Layer l carries the label along one direction with signal strength l (layer 0: none)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=generator)
    values = torch.randn(n_layers, n, d, generator=generator)
    for layer in range(n_layers):
        values[layer, :, 0] += 3.0 * layer * (2 * labels - 1)
    return Activations(
        values, labels, torch.arange(n) % 50, list(range(n_layers)), "hook_resid_post", "synthetic", n_layers
    )


def test_batched_probes_find_the_signal_and_controls_stay_at_chance():
    result = train_probes(synthetic())
    accuracy = result.accuracy["test"]
    assert accuracy[0] < 0.7 and accuracy[2] > 0.97
    assert result.best_layer in (1, 2)  # both carry a separable signal
    assert abs(result.shuffled[2] - 0.5) < 0.15
    assert result.auc["test"][2] > 0.99
    torch.testing.assert_close(result.selectivity, accuracy - result.control)


def test_batched_probes_equal_single_layer_probes():
    acts = synthetic()
    together = train_probes(acts, controls=False)
    for layer in range(3):
        alone = Activations(
            acts.values[layer : layer + 1],
            acts.labels,
            acts.type_ids,
            [layer],
            acts.hook,
            acts.model_name,
            acts.n_layers,
        )
        single = train_probes(alone, controls=False)
        torch.testing.assert_close(single.weight[0], together.weight[layer], atol=1e-5, rtol=1e-4)


def test_regression_probes_and_mass_mean():
    acts = synthetic()
    scalar = Activations(
        acts.values,
        acts.values[2, :, 0].clone() + 0.1,
        acts.type_ids,
        acts.layers,
        acts.hook,
        acts.model_name,
        acts.n_layers,
    )
    result = train_probes(scalar, kind="linear")
    assert result.r2["test"][2] > 0.99 and result.r2["test"][0] < 0.5
    mass_mean = mass_mean_probe(acts)
    assert mass_mean.accuracy[2] > 0.97 and mass_mean.directions.shape == (3, 16)


def test_roc_auc_against_a_direct_count():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.4])
    labels = torch.tensor([0, 0, 1, 1, 1])
    pairs = [(p, n) for p in scores[labels == 1] for n in scores[labels == 0]]
    expected = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)
    assert roc_auc(scores, labels) == pytest.approx(expected)


def test_bad_input_gets_specific_errors(tiny_llama, tmp_path):
    acts = synthetic()
    one_class = Activations(
        acts.values,
        torch.zeros(300, dtype=torch.long),
        acts.type_ids,
        acts.layers,
        acts.hook,
        acts.model_name,
        acts.n_layers,
    )
    with pytest.raises(ValueError, match=r"single class \(\[0\]\); a probe needs at least two"):
        train_probes(one_class)
    few = Activations(
        acts.values[:, :5],
        acts.labels[:5],
        acts.type_ids[:5],
        acts.layers,
        acts.hook,
        acts.model_name,
        acts.n_layers,
    )
    with pytest.raises(
        ValueError, match=r"5 examples of 5 word types are too few for splits.*split='random'"
    ):
        train_probes(few)
    with pytest.raises(ValueError, match=r"5 examples are too few for splits"):
        train_probes(few, split="random")
    result = train_probes(acts, controls=False)
    result.save(tmp_path / "probe")
    with pytest.raises(ValueError, match=r"holds probes for 'synthetic' \(3 layers, d_model 16\), not for"):
        ProbeResult.load(tmp_path / "probe", model=tiny_llama)
    with pytest.raises(ValueError, match="expected a .jsonl or .csv file"):
        load_probe_dataset(tmp_path / "data.txt")
    with pytest.raises(ValueError, match="3 texts but 2 labels"):
        ProbeDataset(["a", "b", "c"], [0, 1])


def test_save_load_round_trip(tmp_path):
    result = train_probes(synthetic())
    result.save(tmp_path / "probe")
    loaded = ProbeResult.load(tmp_path / "probe")
    torch.testing.assert_close(loaded.weight, result.weight)
    torch.testing.assert_close(loaded.accuracy["test"], result.accuracy["test"])
    assert loaded.best_layer == result.best_layer
    assert loaded.split == "types"
    traces = {trace.name: trace for trace in probe_accuracy(loaded).data}
    assert list(traces) == ["probe (test accuracy)", "shuffled labels", "control task", "selectivity"]
    torch.testing.assert_close(torch.as_tensor(traces["selectivity"].y), result.selectivity)


def test_collection_files_and_user_datasets(tiny_llama, tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(
        "\n".join(
            json.dumps({"text": t, "label": i % 2, "position": 1})
            for i, t in enumerate(["ab", "cd", "ef", "gh"])
        )
    )
    dataset = load_probe_dataset(path)
    assert dataset.positions == [1, 1, 1, 1] and dataset.labels == [0, 1, 0, 1]
    in_memory = collect_activations(tiny_llama, dataset, batch_size=3, progress=False)
    on_disk = collect_activations(tiny_llama, dataset, path=tmp_path / "acts.npy", progress=False)
    assert in_memory.values.shape == (2, 4, 64)
    torch.testing.assert_close(in_memory.values, on_disk.values)
    _, cache = tiny_llama.run_with_cache("ef")
    torch.testing.assert_close(
        in_memory.values[1, 2], cache["blocks.1.hook_resid_post"][0, 1], atol=1e-5, rtol=0
    )
    csv_path = tmp_path / "data.csv"
    csv_path.write_text("text,label\nhello,0.5\nworld,1.5\n")
    assert load_probe_dataset(csv_path).labels == [0.5, 1.5]


def test_direction_interventions(tiny_llama):
    tokens = tiny_llama.to_tokens("hello there")
    direction = torch.randn(64)

    def metric(logits):
        return logits[0, -1, 5]

    before, ablated = direction_effect(tiny_llama, tokens, metric, direction, layer=0, mode="ablate")
    _, added = direction_effect(tiny_llama, tokens, metric, direction, layer=0, mode="add", scale=5.0)
    assert before != ablated and before != added
    _, nothing = direction_effect(tiny_llama, tokens, metric, direction, layer=0, mode="add", scale=0.0)
    torch.testing.assert_close(nothing, before)


def test_built_in_datasets_are_balanced_and_read_one_token_type():
    for dataset in (number_agreement(400), entity_category(400)):
        assert 0.35 < sum(dataset.labels) / len(dataset) < 0.65
        assert {text.split()[-1] for text in dataset.texts} == {"today"}
        assert len(set(dataset.types)) > 60  # enough word types for a type-disjoint test split


def test_default_split_is_type_disjoint_on_the_built_in_tasks():
    """No test or validation word (in either number, for subjects) ever occurs in training."""
    subjects = [text.split()[1] for text in number_agreement(400).texts]  # "The dogs near ..."
    for dataset, words in (
        (number_agreement(400), subjects),
        (entity_category(400), entity_category(400).types),
    ):
        vocabulary = {word: i for i, word in enumerate(sorted(set(dataset.types)))}
        types = torch.tensor([vocabulary[word] for word in dataset.types])
        split = split_indices(len(dataset), (0.6, 0.2, 0.2), seed=0, types=types)
        assert sorted(torch.cat(list(split.values())).tolist()) == list(range(len(dataset)))
        seen = {name: {words[i] for i in rows.tolist()} for name, rows in split.items()}
        assert not seen["train"] & seen["test"] and not seen["train"] & seen["val"]
        assert not seen["val"] & seen["test"]
        assert min(len(rows) for rows in split.values()) >= 0.1 * len(dataset)


def planted(memorisable_only: bool, n: int = 600, n_types: int = 150, d: int = 192) -> Activations:
    """Each example is its word type's random vector plus noise; the label is a random
    function of the type. With ``memorisable_only`` that is all (a probe can only memorise
    which type carries which label); otherwise the label is also written along a direction
    shared by all types (a property that generalises to unseen types). Memorising needs more
    dimensions than training types; generalising is cleanest in few dimensions."""
    generator = torch.Generator().manual_seed(0)
    type_ids = torch.randint(0, n_types, (n,), generator=generator)
    type_labels = torch.randint(0, 2, (n_types,), generator=generator)
    labels = type_labels[type_ids]
    values = torch.randn(n_types, d, generator=generator)[type_ids] + 0.1 * torch.randn(
        n, d, generator=generator
    )
    if not memorisable_only:
        values[:, 0] += 2.0 * (2 * labels - 1)
    return Activations(values[None], labels, type_ids, [0], "hook_resid_post", "planted", 1)


def test_type_disjoint_probes_do_not_pass_by_memorising_words():
    memorised = planted(memorisable_only=True)
    random_split = train_probes(memorised, split="random")
    assert random_split.accuracy["test"][0] > 0.9  # words recur: identity is enough
    assert random_split.control[0] > 0.9 and random_split.selectivity[0] < 0.15
    by_type = train_probes(memorised)  # default: type-disjoint
    assert by_type.split == "types" and by_type.accuracy["test"][0] < 0.7


def test_selectivity_is_accuracy_minus_the_control_task_mean():
    result = train_probes(planted(memorisable_only=False, d=8), control_draws=3)
    accuracy, control = result.accuracy["test"][0], result.control[0]
    assert accuracy > 0.9  # the shared direction generalises to unseen types
    assert abs(control - 0.5) < 0.15  # random per-type labels of unseen types: chance
    torch.testing.assert_close(result.selectivity, result.accuracy["test"] - result.control, atol=0, rtol=0)
    assert result.selectivity[0] > 0.3
    with pytest.raises(ValueError, match="control_draws must be at least 1"):
        train_probes(planted(memorisable_only=False, d=8), control_draws=0)


@pytest.mark.slow
def test_smollm2_probe_reads_subject_number_of_unseen_nouns(smollm2):
    """The issue's bar on one built-in task (both tasks, more seeds: benchmarks/bench_probing.py)."""
    model, _ = smollm2
    result = train_probes(collect_activations(model, number_agreement(300), progress=False))
    best = result.layers.index(result.best_layer)
    assert result.split == "types"
    assert result.accuracy["test"][best] >= 0.85
    assert result.selectivity[best] >= 0.3
    assert abs(result.shuffled[best] - result.chance) <= 0.15
