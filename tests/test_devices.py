"""Device-agnostic by construction: no analysis creates a tensor on the default device and
then mixes it with the model's or the caller's tensors.

There is no GPU in CI, so the test flips the situation round: the model and every input
stay on the CPU while ``meta`` is the default device (``DefaultDeviceMeta``). A tensor created
without ``device=`` then lands on ``meta`` and any op mixing it with real data fails, exactly
as a CPU-created tensor meets CUDA data on a GPU run (labels on CUDA crashed
``train_probes``).
"""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors

from mechinterp.metrics import LogitDifference


class DefaultDeviceMeta(TorchFunctionMode):
    """Factory calls without ``device=`` create ``meta`` tensors (like ``torch.device("meta")``),
    except ``torch.tensor`` / ``torch.as_tensor`` of a tensor, which keep its device as on a GPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        keeps_device = func in (torch.tensor, torch.as_tensor) and args and isinstance(args[0], torch.Tensor)
        if func in _device_constructors() and kwargs.get("device") is None and not keeps_device:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def _pair():
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(3, 98, (2, 7), generator=generator)
    corrupt = clean.clone()
    corrupt[:, 2] = 9
    metric = LogitDifference.last_position(torch.ones_like(clean), correct=[5, 6], incorrect=[7, 8])
    return clean, corrupt, metric


def _analyses(model):
    from circuits import Graph, eap_scores, patch_edges
    from mechinterp.lens import direct_logit_attribution, logit_lens
    from mechinterp.patching import Receiver, SweepSpec, attribution_patch, patch_sweep, path_patch

    clean, corrupt, metric = _pair()
    graph = Graph.from_model(model)
    correct, incorrect = torch.tensor([5, 6]), torch.tensor([7, 8])
    masks = torch.zeros(2, len(graph.edges))
    return {
        "forward": lambda: model(clean),
        "generate": lambda: model.generate(clean, max_new_tokens=3),
        "run_with_cache": lambda: model.run_with_cache(clean, return_type=None),
        "patch_sweep": lambda: patch_sweep(
            model, clean, corrupt, SweepSpec(kind="z"), metric, progress=False
        ),
        "attribution_patch": lambda: attribution_patch(
            model, clean, corrupt, metric, SweepSpec(kind="resid_pre"), method="atp*"
        ),
        "path_patch": lambda: path_patch(
            model,
            clean,
            corrupt,
            SweepSpec(kind="z", per_position=False),
            [Receiver("logits")],
            metric,
            progress=False,
        ),
        "dla": lambda: direct_logit_attribution(model, clean, correct=correct, incorrect=incorrect),
        "logit_lens": lambda: logit_lens(model, clean, targets=correct),
        "eap": lambda: eap_scores(model, clean, corrupt, graph, metric),
        "patch_edges": lambda: patch_edges(model, clean, corrupt, graph, masks, metric),
    }


ANALYSES = [
    "forward",
    "generate",
    "run_with_cache",
    "patch_sweep",
    "attribution_patch",
    "path_patch",
    "dla",
    "logit_lens",
    "eap",
    "patch_edges",
]


@pytest.mark.parametrize("name", ANALYSES)
def test_analyses_create_no_tensor_on_the_default_device(tiny_llama, name):
    run = _analyses(tiny_llama)[name]
    with DefaultDeviceMeta():
        run()


def test_probes_train_on_the_labels_device():
    from mechinterp.probing.collect import Activations
    from mechinterp.probing.probes import train_probes

    generator = torch.Generator().manual_seed(0)
    n = 60
    activations = Activations(
        values=torch.randn(2, n, 8, generator=generator),
        labels=torch.randint(0, 2, (n,), generator=generator),
        type_ids=torch.arange(n) % 10,
        layers=[0, 1],
        hook="hook_resid_post",
        model_name="planted",
        n_layers=2,
    )
    with DefaultDeviceMeta():
        result = train_probes(activations, device="cpu", max_epochs=5)
    assert result.accuracy["test"].device.type == "cpu"
