"""Probing: labelled datasets, activation collection, batched per-layer probes, controls,
probe directions as interventions.

Example:
    >>> from mechinterp.probing import collect_activations, number_agreement, train_probes
    >>> result = train_probes(collect_activations(model, number_agreement(400)))
"""

from mechinterp.probing.collect import Activations, collect_activations
from mechinterp.probing.datasets import (
    BUILT_IN,
    ProbeDataset,
    entity_category,
    load_probe_dataset,
    number_agreement,
)
from mechinterp.probing.interventions import direction_effect, direction_hook
from mechinterp.probing.probes import MassMeanResult, ProbeResult, mass_mean_probe, roc_auc, train_probes

__all__ = [
    "BUILT_IN",
    "Activations",
    "MassMeanResult",
    "ProbeDataset",
    "ProbeResult",
    "collect_activations",
    "direction_effect",
    "direction_hook",
    "entity_category",
    "load_probe_dataset",
    "mass_mean_probe",
    "number_agreement",
    "roc_auc",
    "train_probes",
]
