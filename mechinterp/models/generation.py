"""Text generation for ``HookedLM`` (``GenerationMixin.generate``): greedy or sampled, with
or without a key/value cache of the positions already run.

With the cache (``use_past_kv_cache=True``, TransformerLens' name) the prompt runs once and
each step runs only the new token through ``forward(..., past=KeyValuePrefix)``; the keys
and values are read from the attention hooks as the hooks left them, so a hook that edits
them also edits what later steps read. Both ways give the same tokens.

Example:
    >>> model.generate("The capital of France is", max_new_tokens=3)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from mechinterp.models.prefix import KeyValuePrefix
from mechinterp.models.tokenization import TextInput

if TYPE_CHECKING:
    from mechinterp.models.hooked_lm import HookedLM


class GenerationMixin:
    """``generate`` for ``HookedLM``."""

    @torch.no_grad()
    def generate(
        self,
        input: TextInput | Int[Tensor, "batch pos"],
        max_new_tokens: int = 20,
        *,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        stop_at_eos: bool = True,
        use_past_kv_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> Int[Tensor, "batch _pos"] | str | list[str]:
        """Greedy (default) or sampled continuation; text in gives text out (a list of
        prompts is left-padded into one batch).

        With ``use_past_kv_cache`` (default, TransformerLens' name) the prompt runs once and
        every step runs only the new token, reading earlier keys and values from a cache;
        hooks then see the prompt once and each new position on its own. Without it each
        step reruns the whole sequence. Both give the same tokens.

        Example:
            >>> model.generate("The capital of France is", max_new_tokens=3)
        """
        if isinstance(input, (str, list)):
            tokens, mask = self.encode(input, padding_side="left")
        else:
            tokens, mask = self._check_tokens(input), torch.ones_like(input, device=self.device)
        eos = self.tokenizer.eos_token_id if self.tokenizer is not None else None
        finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=self.device)
        step = _CachedSteps(self) if use_past_kv_cache else None
        for _ in range(max_new_tokens):
            if step is None:
                logits = self(tokens, attention_mask=mask)[:, -1].float()
            else:
                logits = step(tokens, mask).float()
            next_token = self._next_token(logits, do_sample, temperature, top_k, generator)
            was_finished = finished.clone()
            if eos is not None and stop_at_eos:
                next_token = torch.where(was_finished, eos, next_token)
                finished |= next_token == eos
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            mask = torch.cat([mask, (~was_finished).long()[:, None]], dim=1)
            if finished.all():
                break
        if isinstance(input, torch.Tensor):
            return tokens
        texts = [
            self.tokenizer.decode(row[m.bool()], skip_special_tokens=True)
            for row, m in zip(tokens, mask, strict=True)
        ]
        return texts[0] if isinstance(input, str) else texts

    @staticmethod
    def _next_token(
        logits: Float[Tensor, "batch d_vocab"],
        do_sample: bool,
        temperature: float,
        top_k: int | None,
        generator: torch.Generator | None,
    ) -> Int[Tensor, " batch"]:
        if not do_sample:
            return logits.argmax(-1)
        logits = logits / temperature
        if top_k is not None:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


class _CachedSteps:
    """Next-token logits for a growing sequence, computing only positions not seen before.

    Each call runs the positions after the cached ones with ``past=`` (a ``KeyValuePrefix``)
    and records their keys (after rotary) and values from the attention hooks, as the
    hooks left them, so a hook that edits keys or values also edits what later steps read.
    """

    def __init__(self, model: HookedLM):
        self.model = model
        self.past: KeyValuePrefix | None = None

    def __call__(self, tokens: Int[Tensor, "batch pos"], mask: Int[Tensor, "batch pos"]) -> Tensor:
        model = self.model
        done = 0 if self.past is None else self.past.length
        new = tokens[:, done:]
        keys: list[Tensor] = []
        values: list[Tensor] = []
        key_hook = KeyValuePrefix.key_hook(model).split(".")[-1]
        handles = []
        try:
            for block in model.blocks:
                handles.append(getattr(block.attn, key_hook).register_forward_hook(_keep(keys)))
                handles.append(block.attn.hook_v.register_forward_hook(_keep(values)))
            last = torch.full((new.shape[0], 1), new.shape[1] - 1, device=model.device)
            logits = model(new, attention_mask=mask, past=self.past, logit_positions=last)
        finally:
            for handle in handles:
                handle.remove()
        if self.past is not None:
            keys = [torch.cat([old, k], dim=1) for old, k in zip(self.past.keys, keys, strict=True)]
            values = [torch.cat([old, v], dim=1) for old, v in zip(self.past.values, values, strict=True)]
        self.past = KeyValuePrefix(tuple(keys), tuple(values))
        return logits[:, -1]


def _keep(store: list[Tensor]) -> Callable[..., None]:
    def hook(module: nn.Module, args: Any, output: Tensor) -> None:
        store.append(output)

    return hook
