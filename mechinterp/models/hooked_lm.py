"""``HookedLM``: a native causal language model whose every activation is a named hook.

The forward pass is ours (not a wrapper around Hugging Face modules), so it can start at
any layer without running the layers before it, which the batched patching engine
relies on. Hook names are TransformerLens names, the model satisfies
``transformer_lens.model_protocol.TransformerLensModelWithWeights``, and therefore
``ActivationCache``, ``transformer_lens.patching`` and ``head_detector`` run on it.

Example:
    >>> import mechinterp
    >>> model = mechinterp.load_model("smollm2-135m")
    >>> logits, cache = model.run_with_cache("The Eiffel Tower is in")
    >>> cache["blocks.3.attn.hook_pattern"].shape       # [batch, head, q_pos, k_pos]
    torch.Size([1, 9, 7, 7])
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.config import TransformerLensConfig
from transformer_lens.hook_points import HookPoint
from transformer_lens.HookedRootModule import HookedRootModule

from mechinterp.models.attention import Rotary
from mechinterp.models.block import AttentionOnlyBlock, TransformerBlock
from mechinterp.models.config import ArchitectureConfig
from mechinterp.models.layers import Embed, Norm, PosEmbed, Unembed
from mechinterp.models.prefix import KeyValuePrefix
from mechinterp.models.tokenization import TextInput, TokenizationMixin
from mechinterp.models.weights import WeightsMixin

ReturnType = Literal["logits", "loss", "both"] | None


class HookedLM(TokenizationMixin, WeightsMixin, HookedRootModule):
    """A hooked decoder-only transformer built from an ``ArchitectureConfig``.

    Build one with ``mechinterp.load_model`` (real weights) or ``HookedLM(cfg)`` (zeros;
    load a state dict yourself). ``model.architecture`` is our config;
    ``model.cfg`` is the TransformerLens view of it that TL utilities read.
    """

    def __init__(self, architecture: ArchitectureConfig, tokenizer: Any | None = None):
        super().__init__()
        self.architecture = architecture
        self.tokenizer = tokenizer
        self.embed = Embed(architecture)
        self.hook_embed = HookPoint()
        learned = architecture.positional == "learned"
        self.pos_embed = PosEmbed(architecture) if learned else None
        self.hook_pos_embed = HookPoint() if learned else None
        self.rotary = None if learned else Rotary(architecture)
        block = AttentionOnlyBlock if architecture.attn_only else TransformerBlock
        self.blocks = nn.ModuleList(block(architecture) for _ in range(architecture.n_layers))
        self.ln_final = Norm(architecture)
        self.unembed = Unembed(architecture)
        self.setup()

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.embed.W_E.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.W_E.dtype

    @property
    def cfg(self) -> TransformerLensConfig:
        """The TransformerLens config view that ``ActivationCache`` and ``patching`` read."""
        arch = self.architecture
        rms = arch.norm == "rmsnorm"
        return TransformerLensConfig(
            d_model=arch.d_model,
            d_head=arch.d_head,
            n_layers=arch.n_layers,
            n_ctx=arch.n_ctx,
            n_heads=arch.n_heads,
            d_mlp=arch.d_mlp,
            d_vocab=arch.d_vocab,
            device=str(self.device),
            use_attn_result=self.blocks[0].attn.use_attn_result,
            use_split_qkv_input=self.blocks[0].use_split_qkv_input,
            default_prepend_bos=self.default_prepend_bos,
            positional_embedding_type="rotary" if self.rotary is not None else "standard",
            n_key_value_heads=arch.n_kv_heads if arch.heads_per_kv_head > 1 else None,
            gated_mlp=arch.mlp == "gated",
            attn_only=arch.attn_only,
            uses_rms_norm=rms,
            eps=arch.norm_eps,
            act_fn=arch.act_fn,
            normalization_type="RMS" if rms else "LN",
            final_rms=rms,
            dtype=self.dtype,
        )

    def set_use_attn_result(self, use: bool) -> None:
        """Turn on ``blocks.{l}.attn.hook_result`` (per-head outputs, ``[batch pos head d_model]``)."""
        for block in self.blocks:
            block.attn.use_attn_result = use

    def set_use_split_qkv_input(self, use: bool) -> None:
        """Turn on per-head inputs ``blocks.{l}.hook_q_input|k_input|v_input``."""
        for block in self.blocks:
            block.use_split_qkv_input = use

    @contextmanager
    def per_head_hooks(self, *, results: bool = False, split_inputs: bool = False) -> Iterator[None]:
        """Turn on ``hook_result`` and/or the per-head q/k/v inputs for the body of a
        ``with`` block; the previous settings come back afterwards, also on an exception.

        Example:
            >>> with model.per_head_hooks(results=True):
            ...     _, cache = model.run_with_cache(tokens)   # cache["blocks.0.attn.hook_result"]
        """
        previous = (self.blocks[0].attn.use_attn_result, self.blocks[0].use_split_qkv_input)
        self.set_use_attn_result(results or previous[0])
        self.set_use_split_qkv_input(split_inputs or previous[1])
        try:
            yield
        finally:
            self.set_use_attn_result(previous[0])
            self.set_use_split_qkv_input(previous[1])

    def saes(self, saes: Any, *, use_error_term: bool = False):
        """Context manager splicing sparse autoencoders / transcoders (``mechinterp.sae.SAE``)
        into their hooks for the body of a ``with`` block; see ``mechinterp.sae.splice``.

        Example:
            >>> with model.saes([sae], use_error_term=True):
            ...     _, cache = model.run_with_cache(tokens)   # cache[f"{sae.hook_name}.hook_sae_acts_post"]
        """
        from mechinterp.sae.splice import splice_saes  # the sae package builds on models

        return splice_saes(self, saes, use_error_term=use_error_term)

    def __repr__(self) -> str:
        a = self.architecture
        return (
            f"HookedLM({a.model_name}: {a.n_layers} layers, d_model={a.d_model}, "
            f"heads={a.n_heads}/{a.kv_heads} kv, d_vocab={a.d_vocab}, {self.dtype}, {self.device})"
        )

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input: TextInput | Int[Tensor, "batch pos"] | Float[Tensor, "batch pos d_model"],
        *,
        return_type: ReturnType = "logits",
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
        attention_mask: Tensor | None = None,
        tokens: Tensor | None = None,
        past: KeyValuePrefix | None = None,
        logit_positions: Tensor | None = None,
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] = "right",
    ) -> Any:
        """Run the model.

        Args:
            input: text, token ids ``[batch, pos]``, or, with ``start_at_layer``, the
                residual stream ``[batch, pos, d_model]`` entering that block.
            return_type: ``"logits"``, ``"loss"`` (mean next-token cross-entropy over real
                tokens), ``"both"`` (a ``(logits, loss)`` tuple) or ``None``.
            start_at_layer: first block to run; blocks before it are not run at all.
            stop_at_layer: return the residual stream entering this block instead of logits.
            attention_mask: ``[batch, pos]``, 1 for real tokens, 0 for padding (either side). Positions are
                counted over real tokens only, so padded rows equal unpadded runs.
            tokens: the token ids ``[batch, pos]``, needed for the loss when ``input`` is a residual stream.
            past: keys and values of the first ``past.length`` positions (``KeyValuePrefix``);
                ``input`` then holds only the later positions, and ``attention_mask`` (if
                given) covers prefix and input together.
            logit_positions: ``[batch, k]`` positions (indices into ``input``) at which to
                compute logits; the result is ``[batch, k, d_vocab]``. Saves the
                unembedding elsewhere.

        Negative layer indices count from the end, as in Python.

        Example:
            >>> resid = model(tokens, stop_at_layer=4)
            >>> logits = model(resid, start_at_layer=4)     # same as model(tokens)
        """
        start = self._layer_index(start_at_layer, "start_at_layer", default=0)
        stop = self._layer_index(stop_at_layer, "stop_at_layer", default=self.architecture.n_layers)
        if stop < start:
            raise ValueError(f"stop_at_layer ({stop}) is before start_at_layer ({start})")
        if isinstance(input, (str, list)):
            input, attention_mask = self.encode(input, prepend_bos=prepend_bos, padding_side=padding_side)
        if start == 0:
            tokens = self._check_tokens(input)
            residual = None
        else:
            residual = self._check_residual(input)
        batch, n_pos = input.shape[:2]
        offset = 0 if past is None else past.length
        if past is not None and past.batch != batch:
            raise ValueError(f"past holds {past.batch} rows but the input has {batch}")
        mask = self._check_mask(attention_mask, batch, offset + n_pos)
        positions, allowed, rotary = self.attention_inputs(mask, offset)
        if residual is None:
            residual = self.embed_tokens(tokens, positions)
        for index in range(start, stop):
            layer_past = None if past is None else past.layer(index)
            residual = self.blocks[index](residual, allowed, rotary, layer_past)
        if stop_at_layer is not None:
            return residual
        if return_type is None:
            return None
        if logit_positions is not None:
            if return_type != "logits":
                raise ValueError("logit_positions only works with return_type='logits'")
            index = logit_positions.to(self.device)[..., None].expand(-1, -1, residual.shape[-1])
            residual = residual.gather(1, index)
        logits = self.unembed(self.ln_final(residual))
        if return_type == "logits":
            return logits
        loss = self._next_token_loss(logits, tokens, mask)
        return loss if return_type == "loss" else (logits, loss)

    def embed_tokens(self, tokens: Tensor, positions: Tensor) -> Float[Tensor, "batch pos d_model"]:
        """The residual stream entering block 0 (token plus learned position embeddings)."""
        residual = self.hook_embed(self.embed(tokens))
        if self.pos_embed is not None:
            residual = residual + self.hook_pos_embed(self.pos_embed(positions))
        return residual

    def attention_inputs(
        self, mask: Int[Tensor, "batch pos"], offset: int = 0
    ) -> tuple[Tensor, Bool[Tensor, "batch 1 q_pos k_pos"], tuple[Tensor, Tensor] | None]:
        """Positions, allowed query-key pairs and rotary tables for the queries at positions
        ``offset:`` of a run with attention mask ``mask`` (what each block needs besides
        the residual stream). Low-level: the patching engine runs blocks with these."""
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, offset:]
        allowed = self._allowed_attention(mask)[:, :, offset:]
        rotary = self.rotary(positions) if self.rotary is not None else None
        return positions, allowed, rotary

    def _layer_index(self, value: int | None, name: str, *, default: int) -> int:
        if value is None:
            return default
        n = self.architecture.n_layers
        if not -n <= value <= n:
            raise ValueError(f"{name}={value} is out of range for a {n}-layer model (allowed: -{n}..{n})")
        return value % n if value < 0 else value

    def _check_tokens(self, tokens: Tensor) -> Int[Tensor, "batch pos"]:
        if tokens.is_floating_point() or tokens.ndim != 2:
            raise ValueError(
                f"expected token ids [batch, pos] (integers), got {tuple(tokens.shape)} {tokens.dtype}; "
                "a residual stream input needs start_at_layer"
            )
        vocab = self.architecture.d_vocab
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= vocab):
            raise ValueError(
                f"token ids must lie in [0, {vocab}); got min {tokens.min().item()}, max {tokens.max().item()}"
            )
        return tokens.to(self.device)

    def _check_residual(self, residual: Tensor) -> Float[Tensor, "batch pos d_model"]:
        expected = self.architecture.d_model
        if residual.ndim != 3 or residual.shape[-1] != expected:
            raise ValueError(
                f"with start_at_layer, input must be a residual stream [batch, pos, {expected}]; "
                f"got shape {tuple(residual.shape)}"
            )
        if residual.dtype != self.dtype:
            raise ValueError(f"residual dtype {residual.dtype} differs from the model's {self.dtype}")
        return residual.to(self.device)

    def _check_mask(self, mask: Tensor | None, batch: int, n_pos: int) -> Int[Tensor, "batch pos"]:
        if n_pos > self.architecture.n_ctx:
            raise ValueError(
                f"sequence of {n_pos} tokens is longer than the context ({self.architecture.n_ctx})"
            )
        if mask is None:
            return torch.ones(batch, n_pos, dtype=torch.long, device=self.device)
        if tuple(mask.shape) != (batch, n_pos):
            raise ValueError(
                f"attention_mask shape {tuple(mask.shape)} does not match input {(batch, n_pos)}"
            )
        return mask.to(self.device, torch.long)

    def _allowed_attention(self, mask: Int[Tensor, "batch pos"]) -> Bool[Tensor, "batch 1 q_pos k_pos"]:
        n_pos = mask.shape[1]
        idx = torch.arange(n_pos, device=mask.device)
        allowed = idx[None, :] <= idx[:, None]
        window = self.architecture.sliding_window
        if window is not None:
            allowed = allowed & (idx[:, None] - idx[None, :] < window)
        return allowed[None, None] & mask.bool()[:, None, None, :]

    @staticmethod
    def _next_token_loss(logits: Tensor, tokens: Tensor | None, mask: Tensor) -> Tensor:
        if tokens is None:
            raise ValueError("return_type='loss' with start_at_layer needs tokens=... for the targets")
        predicted = logits[:, :-1].flatten(0, 1)
        keep = (mask[:, :-1] * mask[:, 1:]).flatten().bool()
        return F.cross_entropy(predicted[keep], tokens[:, 1:].flatten()[keep])

    # ------------------------------------------------------------------ hooks and caching
    def check_hook_name(self, name: str) -> None:
        """Raise ``ValueError`` naming the closest valid hook names if ``name`` is not a hook."""
        if name not in self.hook_dict:
            close = difflib.get_close_matches(name, list(self.hook_dict), n=5, cutoff=0.5)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise ValueError(f"unknown hook name {name!r}{hint}")

    def add_hook(self, name: str | Callable, hook: Callable, *args: Any, **kwargs: Any) -> None:
        if isinstance(name, str):
            self.check_hook_name(name)
        super().add_hook(name, hook, *args, **kwargs)

    def hooks(self, fwd_hooks: Any = (), bwd_hooks: Any = (), *args: Any, **kwargs: Any):
        """Context manager adding hooks for its body and removing them after, even on error.

        Example:
            >>> with model.hooks(fwd_hooks=[("blocks.0.hook_attn_out", lambda x, hook: 0 * x)]):
            ...     logits = model(tokens)
        """
        for name, _ in [*fwd_hooks, *bwd_hooks]:
            if isinstance(name, str):
                self.check_hook_name(name)
        return super().hooks(list(fwd_hooks), list(bwd_hooks), *args, **kwargs)

    def run_with_cache(
        self, *model_args: Any, names_filter: Any = None, remove_batch_dim: bool = False, **kwargs: Any
    ) -> tuple[Any, ActivationCache]:
        """Run the model and return ``(output, transformer_lens.ActivationCache)``.

        Accepts TransformerLens' ``names_filter`` (name, list of names or predicate),
        ``device``, ``pos_slice``, ``remove_batch_dim`` and ``incl_bwd``; every other
        keyword goes to ``forward``.

        Example:
            >>> _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.hook_resid_post"])
        """
        names = [names_filter] if isinstance(names_filter, str) else names_filter
        if isinstance(names, (list, tuple)):
            for name in names:
                self.check_hook_name(name)
        output, cache_dict = super().run_with_cache(
            *model_args, names_filter=names_filter, remove_batch_dim=remove_batch_dim, **kwargs
        )
        return output, ActivationCache(cache_dict, self, has_batch_dim=not remove_batch_dim)

    # ------------------------------------------------------------------ generation
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
        generator: torch.Generator | None = None,
    ) -> Int[Tensor, "batch new_pos"] | str | list[str]:
        """Greedy (default) or sampled continuation; text in gives text out.

        Each step reruns the whole prefix (no key/value cache yet), which is fine for the
        short continuations interpretability work needs.

        Example:
            >>> model.generate("The capital of France is", max_new_tokens=3)
        """
        if isinstance(input, (str, list)):
            tokens, mask = self.encode(input, padding_side="left")
        else:
            tokens, mask = self._check_tokens(input), torch.ones_like(input, device=self.device)
        eos = self.tokenizer.eos_token_id if self.tokenizer is not None else None
        finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=self.device)
        for _ in range(max_new_tokens):
            logits = self(tokens, attention_mask=mask)[:, -1].float()
            if do_sample:
                logits = logits / temperature
                if top_k is not None:
                    kth = logits.topk(top_k, dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                next_token = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
            else:
                next_token = logits.argmax(-1)
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
