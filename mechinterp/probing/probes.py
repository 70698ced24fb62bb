"""Linear probes for every layer at once, with controls.

Alain & Bengio (2016) read concepts off hidden states with linear classifiers. Here one
probe per layer is trained in a single batched optimisation (weights ``[layer, d_model,
class]``, full-batch Adam on the model's device, early stopping per layer on the validation
loss). Every probe is reported next to two controls: the same probe on shuffled labels, and
Hewitt & Liang's (2019) control task, where each word type gets a random label; the
*selectivity* is task accuracy minus control-task accuracy. ``mass_mean_probe`` is the
difference-of-means probe (class-mean direction, midpoint threshold).

The default split is type-disjoint (``split="types"``): the word types (the dataset's
``types``, else the token read) are divided between train, validation and test, so a probe
cannot pass by memorising which words carry which label; it has to read a property that
generalises to words it never saw. On such a split the control task cannot beat chance on
the test words, and selectivity is how far the probe gets above it. ``split="random"``
splits examples instead (words recur across splits; a high score may be memorised identity).

Example:
    >>> result = train_probes(collect_activations(model, number_agreement(400)))
    >>> result.best_layer, result.accuracy["test"][result.best_layer]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
import torch
from jaxtyping import Float, Shaped
from safetensors.torch import load_file, save_file
from torch import Tensor

from mechinterp.probing.collect import Activations

ProbeKind = Literal["logistic", "linear"]
SplitKind = Literal["types", "random"]
SPLITS = ("train", "val", "test")
FORMAT_VERSION = 2


def split_indices(
    n: int, fractions: tuple[float, float, float], seed: int, types: Tensor | None = None
) -> dict[str, Tensor]:
    """A seeded train / validation / test split of ``n`` examples.

    With ``types`` (one word-type id per example) the split is type-disjoint: the types are
    shuffled and divided by ``fractions``, and every example goes where its type went, so no
    test (or validation) word ever appears in training. Without, examples are split at random.

    Example:
        >>> split = split_indices(6, (0.4, 0.3, 0.3), seed=0, types=torch.tensor([0, 0, 1, 1, 2, 3]))
        >>> sorted(split)
        ['test', 'train', 'val']
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) <= 0:
        raise ValueError(f"splits must be three positive fractions summing to 1, got {fractions}")
    if types is None:
        units, members = n, None
    else:
        if len(types) != n:
            raise ValueError(f"{n} examples but {len(types)} type ids")
        unique, members = types.cpu().unique(return_inverse=True)
        units = len(unique)
    sizes = [round(f * units) for f in fractions[:2]]
    sizes.append(units - sum(sizes))
    order = torch.randperm(units, generator=torch.Generator().manual_seed(seed), device="cpu")
    groups = dict(zip(SPLITS, torch.split(order, sizes), strict=True))
    if members is not None:  # examples follow their type
        groups = {name: torch.isin(members, chosen).nonzero()[:, 0] for name, chosen in groups.items()}
    counts = [len(groups[name]) for name in SPLITS]
    if min(counts) < 2:
        what = "examples" if members is None else f"examples of {units} word types"
        fix = "" if members is None else "; add word types, or pass split='random' to split examples"
        raise ValueError(
            f"{n} {what} are too few for splits {fractions}: sizes would be {counts} (need >= 2 each){fix}"
        )
    return groups


def roc_auc(scores: Float[Tensor, " example"], labels: Shaped[Tensor, " example"]) -> float:
    """Binary ROC-AUC from ranks (Mann-Whitney U), ties averaged."""
    positive = labels.bool()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = torch.tensor(pd.Series(scores.double().numpy()).rank(method="average").to_numpy(), device="cpu")
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _fit(
    x: Tensor,
    y: Tensor,
    split: dict[str, Tensor],
    kind: ProbeKind,
    n_out: int,
    layer_ids: list[int],
    *,
    lr: float,
    max_epochs: int,
    patience: int,
    weight_decay: float,
    seed: int,
) -> tuple[Tensor, Tensor]:
    """Weights ``[layer, d, out]`` and bias ``[layer, out]`` of all layers' probes at once.

    Full-batch Adam (L2 weight decay) over the stacked probes of all still-training layers.
    Each layer starts from its own seed and stops on its own (patience on the validation
    loss, keeping its best weights); finished layers leave the batch, so the batched result
    equals training each layer alone while every step is one batched matrix product.
    """
    n_layers, _, d = x.shape
    initial = [
        torch.randn(d, n_out, generator=torch.Generator().manual_seed(seed * 100_003 + layer), device="cpu")
        * 0.01
        for layer in layer_ids
    ]
    best_weight = torch.stack(initial).to(x.device)
    best_bias = torch.zeros(n_layers, n_out, device=x.device)
    best_loss = torch.full((n_layers,), float("inf"), device=x.device)
    waited = torch.zeros(n_layers, dtype=torch.long, device=x.device)
    active = torch.arange(n_layers, device=x.device)  # layers still training
    params = [best_weight.clone(), best_bias.clone()]
    moments = [torch.zeros_like(p) for p in params] + [torch.zeros_like(p) for p in params]
    data = {name: (x[:, split[name]], y[split[name]]) for name in ("train", "val")}  # gathered once
    transposed = data["train"][0].transpose(1, 2).contiguous()  # [layer, d, n] for the weight gradient
    beta1, beta2, eps = 0.9, 0.999, 1e-8

    def outputs(name: str, weight: Tensor, bias: Tensor) -> Tensor:  # [active layer, n, out]
        return torch.baddbmm(bias[:, None], data[name][0], weight)

    def loss_gradient(out: Tensor, target: Tensor) -> Tensor:
        """d(mean loss)/d(out): softmax minus one-hot (logistic) or 2 (out - y) (squared error)."""
        if kind == "logistic":
            gradient = out.softmax(-1)
            gradient[:, torch.arange(len(target), device=target.device), target] -= 1
        else:
            gradient = 2 * (out - target[:, None])
        return gradient / len(target)

    def losses(name: str, weight: Tensor, bias: Tensor) -> Tensor:  # [active layer]
        out, target = outputs(name, weight, bias), data[name][1]
        if kind == "logistic":
            return -out.log_softmax(-1)[:, torch.arange(len(target), device=target.device), target].mean(1)
        return ((out[..., 0] - target) ** 2).mean(1)

    for step in range(1, max_epochs + 1):
        # full-batch gradients in closed form (the same numbers autograd gives, without its overhead)
        gradient = loss_gradient(outputs("train", *params), data["train"][1])
        grads = (torch.bmm(transposed, gradient), gradient.sum(1))
        for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
            grad = grad + weight_decay * param
            moments[i].mul_(beta1).add_(grad, alpha=1 - beta1)
            moments[i + 2].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denominator = (moments[i + 2] / (1 - beta2**step)).sqrt_().add_(eps)
            params[i] = param - lr / (1 - beta1**step) * moments[i] / denominator
        val = losses("val", *params)
        improved = val < best_loss[active] - 1e-6
        rows = active[improved]
        best_loss[rows] = val[improved]
        best_weight[rows], best_bias[rows] = params[0][improved], params[1][improved]
        waited[active] = torch.where(improved, 0, waited[active] + 1)
        keep = waited[active] <= patience
        if not bool(keep.all()):  # finished layers leave the batch
            active = active[keep]
            if len(active) == 0:
                break
            params = [p[keep] for p in params]
            moments = [m[keep] for m in moments]
            data = {name: (features[keep], target) for name, (features, target) in data.items()}
            transposed = transposed[keep]
    return best_weight, best_bias


@dataclass(frozen=True, eq=False)
class ProbeResult:
    """Per-layer probe metrics on each split, controls, and the probes themselves.

    ``accuracy`` / ``auc`` (logistic) or ``r2`` (linear): ``{split: [layer]}``;
    ``shuffled``: test metric with shuffled labels; ``control``: test accuracy on the
    control task (logistic only; the mean over ``control_draws`` tasks); ``selectivity`` =
    test accuracy - control; ``split``: how examples were divided (``"types"``: no test
    word type occurs in training).
    """

    kind: ProbeKind
    layers: list[int]
    accuracy: dict[str, Float[Tensor, " layer"]]
    auc: dict[str, Float[Tensor, " layer"]]
    r2: dict[str, Float[Tensor, " layer"]]
    shuffled: Float[Tensor, " layer"]
    control: Float[Tensor, " layer"] | None
    weight: Float[Tensor, "layer d_model label"]
    bias: Float[Tensor, "layer label"]
    mean: Float[Tensor, "layer d_model"]
    std: Float[Tensor, "layer d_model"]
    chance: float
    model_name: str
    n_layers: int
    hook: str
    split: SplitKind

    @property
    def score(self) -> dict[str, Float[Tensor, " layer"]]:
        """The headline metric: accuracy (logistic) or R^2 (linear), per split and layer."""
        return self.accuracy if self.kind == "logistic" else self.r2

    @property
    def selectivity(self) -> Float[Tensor, " layer"] | None:
        return None if self.control is None else self.accuracy["test"] - self.control

    @property
    def best_layer(self) -> int:
        """The layer whose probe does best on the validation split."""
        return self.layers[int(self.score["val"].argmax())]

    def direction(self, layer: int) -> Float[Tensor, " d_model"]:
        """The probe's direction in the residual stream of ``layer`` (binary logistic: class 1
        minus class 0; linear: the regression weights), undoing the standardisation."""
        index = self.layers.index(layer)
        weight = self.weight[index]
        column = weight[:, 1] - weight[:, 0] if self.kind == "logistic" else weight[:, 0]
        return column / self.std[index]

    def save(self, path: str | Path) -> None:
        """``PATH.safetensors`` (tensors) + ``PATH.json`` (metrics, provenance)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(
            {
                "weight": self.weight.contiguous(),
                "bias": self.bias.contiguous(),
                "mean": self.mean.contiguous(),
                "std": self.std.contiguous(),
            },
            str(path.with_suffix(".safetensors")),
        )
        info = {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "layers": self.layers,
            "chance": self.chance,
            "model_name": self.model_name,
            "n_layers": self.n_layers,
            "hook": self.hook,
            "split": self.split,
            "accuracy": {k: v.tolist() for k, v in self.accuracy.items()},
            "auc": {k: v.tolist() for k, v in self.auc.items()},
            "r2": {k: v.tolist() for k, v in self.r2.items()},
            "shuffled": self.shuffled.tolist(),
            "control": None if self.control is None else self.control.tolist(),
        }
        path.with_suffix(".json").write_text(json.dumps(info, indent=1))

    @classmethod
    def load(cls, path: str | Path, model=None) -> ProbeResult:
        """Read a saved probe; with ``model``, check it was trained on that model."""
        path = Path(path)
        info = json.loads(path.with_suffix(".json").read_text())
        tensors = load_file(str(path.with_suffix(".safetensors")))
        if model is not None:
            arch = model.architecture
            if info["n_layers"] != arch.n_layers or tensors["weight"].shape[1] != arch.d_model:
                raise ValueError(
                    f"{path} holds probes for {info['model_name']!r} ({info['n_layers']} layers, d_model "
                    f"{tensors['weight'].shape[1]}), not for {arch.model_name!r} ({arch.n_layers} layers, "
                    f"d_model {arch.d_model})"
                )
        return cls(
            kind=info["kind"],
            layers=info["layers"],
            accuracy={k: torch.tensor(v) for k, v in info["accuracy"].items()},
            auc={k: torch.tensor(v) for k, v in info["auc"].items()},
            r2={k: torch.tensor(v) for k, v in info["r2"].items()},
            shuffled=torch.tensor(info["shuffled"]),
            control=None if info["control"] is None else torch.tensor(info["control"]),
            weight=tensors["weight"],
            bias=tensors["bias"],
            mean=tensors["mean"],
            std=tensors["std"],
            chance=info["chance"],
            model_name=info["model_name"],
            n_layers=info["n_layers"],
            hook=info["hook"],
            split=info.get("split", "random"),  # format 1 files were split at random
        )


def _evaluate(x: Tensor, y: Tensor, weight: Tensor, bias: Tensor, kind: ProbeKind, rows: Tensor):
    """(accuracy, auc, r2) per layer on ``rows``."""
    out = torch.einsum("lnd,ldo->lno", x[:, rows], weight) + bias[:, None]
    target = y[rows]
    n_layers = x.shape[0]
    if kind == "logistic":
        accuracy = (out.argmax(-1) == target).float().mean(1)
        if out.shape[-1] == 2:
            margin = out[..., 1] - out[..., 0]
            auc = torch.tensor(
                [roc_auc(margin[layer].cpu(), target.cpu()) for layer in range(n_layers)], device="cpu"
            )
        else:
            auc = torch.full((n_layers,), float("nan"), device="cpu")
        return accuracy.cpu(), auc, torch.full((n_layers,), float("nan"), device="cpu")
    residual = ((out[..., 0] - target) ** 2).sum(1)
    total = ((target - target.mean()) ** 2).sum()
    nan = torch.full((n_layers,), float("nan"), device="cpu")
    return nan, nan, (1 - residual / total).cpu()


def _train_and_score(x, y, split, kind, n_out, layer_ids, options) -> tuple[Tensor, Tensor, dict]:
    weight, bias = _fit(x, y, split, kind, n_out, layer_ids, **options)
    scores = {name: _evaluate(x, y, weight, bias, kind, rows) for name, rows in split.items()}
    return weight, bias, scores


@torch.no_grad()
def train_probes(
    activations: Activations,
    *,
    kind: ProbeKind = "logistic",
    splits: tuple[float, float, float] = (0.6, 0.2, 0.2),
    split: SplitKind = "types",
    lr: float = 1e-2,
    max_epochs: int = 500,
    patience: int = 25,
    weight_decay: float = 1e-4,
    controls: bool = True,
    control_draws: int = 5,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> ProbeResult:
    """Train one probe per layer, all layers in one batched optimisation, with controls.

    Args:
        kind: ``"logistic"`` (integer class labels) or ``"linear"`` (scalar regression, R^2).
        splits: train / validation / test fractions (seeded by ``seed``); of the word types
            with ``split="types"`` (type-disjoint, the default), of the examples with
            ``split="random"``.
        controls: also train on shuffled labels and (logistic) on Hewitt & Liang's control task.
        control_draws: control tasks (independent random labels per word type) whose test
            accuracies are averaged into ``control``. On a type-disjoint split one draw is
            chance plus the luck of a few dozen test types' coin flips; the mean of several
            is a steadier baseline for selectivity.
        device: where to optimise (default: CUDA if available).
    """
    labels = activations.labels
    if kind == "logistic":
        if labels.is_floating_point() and not bool((labels == labels.round()).all()):
            raise ValueError(
                "logistic probes need integer class labels; use kind='linear' for scalar targets"
            )
        labels = labels.long()
        classes = labels.unique()
        if len(classes) < 2:
            raise ValueError(f"labels have a single class ({classes.tolist()}); a probe needs at least two")
        if not torch.equal(classes, torch.arange(len(classes), device=classes.device)):
            raise ValueError(f"class labels must be 0..K-1, got {classes.tolist()}")
    else:
        labels = labels.float()
    if control_draws < 1:
        raise ValueError(f"control_draws must be at least 1, got {control_draws}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    split_rows = split_indices(len(labels), splits, seed, _types(activations, split))
    x = activations.values.to(device, torch.float32)
    mean = x[:, split_rows["train"]].mean(1, keepdim=True)
    std = x[:, split_rows["train"]].std(1, keepdim=True) + 1e-6
    x = (x - mean) / std
    y = labels.to(device)
    if kind == "linear":  # standardised targets train faster; R^2 does not change
        y = (y - y[split_rows["train"]].mean()) / (y[split_rows["train"]].std() + 1e-12)
    n_out = int(labels.max()) + 1 if kind == "logistic" else 1
    layer_ids = list(activations.layers)
    options = {
        "lr": lr,
        "max_epochs": max_epochs,
        "patience": patience,
        "weight_decay": weight_decay,
        "seed": seed,
    }
    weight, bias, scores = _train_and_score(x, y, split_rows, kind, n_out, layer_ids, options)
    shuffled = control = None
    if controls:
        permutation = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + 1), device="cpu")
        permutation = permutation.to(device)
        _, _, shuffled_scores = _train_and_score(
            x, y[permutation], split_rows, kind, n_out, layer_ids, options
        )
        shuffled = shuffled_scores["test"][0 if kind == "logistic" else 2]
        if kind == "logistic":
            draws = []
            for draw in range(control_draws):
                control_labels = _control_task(activations.type_ids, labels, seed + 1000 * draw).to(device)
                _, _, control_scores = _train_and_score(
                    x, control_labels, split_rows, kind, n_out, layer_ids, options
                )
                draws.append(control_scores["test"][0])
            control = torch.stack(draws).mean(0)
    chance = float(torch.bincount(labels).max()) / len(labels) if kind == "logistic" else 0.0
    return ProbeResult(
        kind=kind,
        layers=list(activations.layers),
        accuracy={name: s[0] for name, s in scores.items()},
        auc={name: s[1] for name, s in scores.items()},
        r2={name: s[2] for name, s in scores.items()},
        shuffled=shuffled
        if shuffled is not None
        else torch.full((len(activations.layers),), float("nan"), device="cpu"),
        control=control,
        weight=weight.cpu(),
        bias=bias.cpu(),
        mean=mean[:, 0].cpu(),
        std=std[:, 0].cpu(),
        chance=chance,
        model_name=activations.model_name,
        n_layers=activations.n_layers,
        hook=activations.hook,
        split=split,
    )


def _types(activations: Activations, split: SplitKind) -> Tensor | None:
    if split not in ("types", "random"):
        raise ValueError(f"split must be 'types' or 'random', got {split!r}")
    return activations.type_ids if split == "types" else None


def _control_task(type_ids: Tensor, labels: Tensor, seed: int) -> Tensor:
    """Hewitt & Liang's control task: every word type gets a random label drawn from the
    task's label distribution, so a probe can only succeed by memorising word identity."""
    generator = torch.Generator().manual_seed(seed + 2)
    types = type_ids.unique()
    frequencies = torch.bincount(labels).float().cpu()  # the generator is a CPU one
    assigned = torch.multinomial(frequencies, len(types), replacement=True, generator=generator)
    lookup = dict(zip(types.tolist(), assigned.tolist(), strict=True))
    return torch.tensor([lookup[t] for t in type_ids.tolist()], device="cpu")


@dataclass(frozen=True, eq=False)
class MassMeanResult:
    """Difference-of-means probes: ``directions`` ``[layer, d_model]`` and test accuracy per layer."""

    layers: list[int]
    directions: Float[Tensor, "layer d_model"]
    thresholds: Float[Tensor, " layer"]
    accuracy: Float[Tensor, " layer"]


def mass_mean_probe(
    activations: Activations,
    *,
    splits: tuple[float, float, float] = (0.6, 0.2, 0.2),
    split: SplitKind = "types",
    seed: int = 0,
) -> MassMeanResult:
    """Binary mass-mean probes (Marks & Tegmark 2023): direction = mean(class 1) - mean(class 0)
    on the training split, threshold halfway between the projected class means; accuracy on
    the test split (the same split as ``train_probes`` with the same seed). Features are
    standardised with training statistics first, so the few huge residual dimensions of
    some models do not swamp the projection; ``directions`` are in standardised units."""
    labels = activations.labels.long()
    if labels.unique().tolist() != [0, 1]:
        raise ValueError(
            f"mass-mean probes are binary: labels must be 0 and 1, got {labels.unique().tolist()}"
        )
    rows = split_indices(len(labels), splits, seed, _types(activations, split))
    x = activations.values.float()
    train, test = rows["train"], rows["test"]
    x = (x - x[:, train].mean(1, keepdim=True)) / (x[:, train].std(1, keepdim=True) + 1e-6)
    positive = x[:, train][:, labels[train] == 1].mean(1)
    negative = x[:, train][:, labels[train] == 0].mean(1)
    directions = positive - negative  # [layer, d_model]
    thresholds = ((positive + negative) / 2 * directions).sum(-1)
    predictions = (torch.einsum("lnd,ld->ln", x[:, test], directions) > thresholds[:, None]).long()
    accuracy = (predictions == labels[test]).float().mean(1)
    return MassMeanResult(list(activations.layers), directions, thresholds, accuracy)
