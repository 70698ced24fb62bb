"""Splicing SAEs into a model: the hook's activation is replaced by the reconstruction.

Inside ``with model.saes([sae, ...], use_error_term=...)`` the hook point ``sae.hook_name``
(for a transcoder: ``sae.cfg.hook_name_out``) passes on ``x̂`` instead of ``x``, and gains
SAELens' hook points as children, so ``run_with_cache``, ``run_with_hooks``, the patching
engine and TransformerLens utilities see them:

    {hook}.hook_sae_input       what the SAE reads          [..., d_in]
    {hook}.hook_sae_acts_pre    pre-activations             [..., d_sae]
    {hook}.hook_sae_acts_post   latent activations          [..., d_sae]
    {hook}.hook_sae_recons      the reconstruction x̂        [..., d_out]
    {hook}.hook_sae_error       x - x̂ (with the error term) [..., d_out]
    {hook}.hook_sae_output      what the rest of the model sees: x̂ (+ the error) [..., d_out]

These are the names and values of SAELens' ``HookedSAETransformer.run_with_cache_with_saes``;
``{hook}`` itself also holds the output. A skip transcoder's skip term is part of x̂ here
(``hook_sae_recons`` is the decoder's part alone, as in SAELens); SAELens' splice leaves the
skip term out.
With ``use_error_term=True`` the output is ``x̂ + (x - x̂_clean)`` where ``x̂_clean`` is the
reconstruction *without* any hooks on the SAE's points: the forward pass is unchanged, and
ablating or patching latents moves ``x̂`` but not the error (as in SAELens and Marks et al.
2024, "Sparse Feature Circuits"). Gradients flow through the error term too.

Example:
    >>> with model.saes([sae], use_error_term=True):
    ...     logits, cache = model.run_with_cache(tokens)
    >>> cache[f"{sae.hook_name}.hook_sae_acts_post"].shape     # [batch, pos, d_sae]
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from transformer_lens.hook_points import HookPoint

if TYPE_CHECKING:
    from mechinterp.sae.model import SAE

POINTS = (
    "hook_sae_input",
    "hook_sae_acts_pre",
    "hook_sae_acts_post",
    "hook_sae_recons",
    "hook_sae_error",
    "hook_sae_output",
)


def spliced_sae(model, hook_name: str) -> SAE:
    """The SAE spliced at ``hook_name`` (its output hook for transcoders); ``ValueError`` if none."""
    point = model.hook_dict.get(hook_name)
    sae = getattr(point, "spliced_sae", None)
    if sae is None:
        spliced = [name for name, p in model.hook_dict.items() if getattr(p, "spliced_sae", None) is not None]
        raise ValueError(
            f"no SAE is spliced at {hook_name!r} (spliced: {', '.join(spliced) or 'none'}); "
            "run inside `with model.saes([sae]):`"
        )
    return sae


def activation_shapes(model, hook_names: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Shape after ``[batch, pos]`` of each hook's activation, from a one-token forward."""
    for name in hook_names:
        model.check_hook_name(name)
    tokens = torch.zeros(1, 1, dtype=torch.long, device=model.device)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=list(hook_names))
    return {name: tuple(cache[name].shape[2:]) for name in hook_names}


class SAESplice:
    """One SAE spliced at one hook point (``SAE.spliced``): child hook points, a forward
    pre-hook that swaps the activation for the reconstruction, and (transcoders) a pre-hook
    reading the input. Checks the hooks exist and that the SAE's widths fit the model's
    activations there (a one-token forward reads them)."""

    def __init__(self, model, sae: SAE, use_error_term: bool):
        self.sae, self.use_error_term = sae, use_error_term
        cfg = sae.cfg
        shapes = activation_shapes(model, sorted({cfg.hook_name, cfg.splice_hook}))
        self.point: HookPoint = model.hook_dict[cfg.splice_hook]
        self.source_point: HookPoint = model.hook_dict[cfg.hook_name]
        if getattr(self.point, "spliced_sae", None) is not None:
            raise ValueError(f"an SAE is already spliced at {cfg.splice_hook}; splice one SAE per hook")
        self.in_shape = self._fit(shapes[cfg.hook_name], cfg.d_in, cfg.hook_name, "d_in", model)
        self.out_shape = self._fit(shapes[cfg.splice_hook], cfg.width_out, cfg.splice_hook, "d_out", model)
        self.captured: Tensor | None = None
        self.handles = []

    @staticmethod
    def _fit(shape: tuple[int, ...], width: int, hook: str, what: str, model) -> tuple[int, ...]:
        if shape[-1:] == (width,) or (
            len(shape) == 2 and shape[0] * shape[1] == width
        ):  # hook_z: heads flattened
            return shape
        raise ValueError(
            f"SAE {what}={width} does not fit {hook} of {model.architecture.model_name}, "
            f"whose activation is [batch, pos, {', '.join(map(str, shape))}]; "
            "was the SAE trained on another model or hook?"
        )

    def __enter__(self) -> SAESplice:
        for name in POINTS:
            self.point.add_module(name, HookPoint())
        object.__setattr__(self.point, "spliced_sae", self.sae)
        self.handles.append(self.point.register_forward_pre_hook(self._replace))
        if self.sae.cfg.is_transcoder:
            self.handles.append(self.source_point.register_forward_pre_hook(self._capture))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        for name in POINTS:
            if name in self.point._modules:
                del self.point._modules[name]
        if "spliced_sae" in self.point.__dict__:
            object.__delattr__(self.point, "spliced_sae")
        self.captured = None

    def _capture(self, module, args):
        self.captured = args[0]

    def _replace(self, module, args):
        (x,) = args
        sae, p = self.sae, self.point
        if sae.cfg.is_transcoder:
            if self.captured is None:
                raise RuntimeError(
                    f"transcoder input {sae.cfg.hook_name} was not computed before {sae.cfg.splice_hook}; "
                    "did the forward start after the input hook?"
                )
            source, self.captured = self.captured, None
        else:
            source = x
        flat_in = source.flatten(-2) if len(self.in_shape) == 2 else source
        sae_in = p.hook_sae_input(flat_in.to(sae.dtype))
        normed, undo = sae.normalizer(sae_in)
        pre = p.hook_sae_acts_pre(sae.hidden_pre(normed))
        post = p.hook_sae_acts_post(sae.activate(pre, normed))
        recons = undo(p.hook_sae_recons(sae.decode(post))) + sae.skip_term(flat_in.to(sae.dtype))
        if self.use_error_term:
            hooked = any(len(getattr(p, n)._forward_hooks) for n in POINTS[:4])
            clean = sae(flat_in.to(sae.dtype)) if hooked else recons
            flat_x = x.flatten(-2) if len(self.out_shape) == 2 else x
            recons = recons + p.hook_sae_error(flat_x.to(sae.dtype) - clean)
        out = p.hook_sae_output(recons).to(x.dtype)
        return (out.unflatten(-1, self.out_shape) if len(self.out_shape) == 2 else out,)


def splice_saes(model, saes: Sequence[SAE] | SAE, *, use_error_term: bool = False) -> AbstractContextManager:
    """Splice ``saes`` into ``model`` for the body of a ``with`` block: ``model.saes`` as a
    function (the model splices any ``mechinterp.models.splicing.Splice``; an SAE is one).

    Example:
        >>> with splice_saes(model, [sae], use_error_term=True):
        ...     _, cache = model.run_with_cache(tokens)
    """
    return model.saes(saes, use_error_term=use_error_term)
