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

from typing import Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int, Shaped
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint
from transformer_lens.HookedRootModule import HookedRootModule

from mechinterp.models.attention import AttentionContext, Rotary
from mechinterp.models.block import AttentionOnlyBlock, TransformerBlock
from mechinterp.models.config import ArchitectureConfig
from mechinterp.models.generation import GenerationMixin
from mechinterp.models.hooks import HookingMixin
from mechinterp.models.layers import Embed, Norm, PosEmbed, Unembed
from mechinterp.models.placement import DeviceMap, place_blocks, resolve_device_map
from mechinterp.models.prefix import KeyValuePrefix
from mechinterp.models.tl_config import ModelConfigView
from mechinterp.models.tokenization import TextInput, TokenizationMixin
from mechinterp.models.weights import WeightsMixin

ReturnType = Literal["logits", "loss", "both"] | None


class HookedLM(TokenizationMixin, WeightsMixin, HookingMixin, GenerationMixin, HookedRootModule):
    """A hooked decoder-only transformer built from an ``ArchitectureConfig``.

    Build one with ``mechinterp.load_model`` (real weights) or ``HookedLM(cfg)`` (zeros;
    load a state dict yourself). ``model.architecture`` is our config;
    ``model.cfg`` is the TransformerLens view of it that TL utilities read.

    This module holds the forward pass and the block runner; the methods live by concern in
    mixins: tokenization (``tokenization``), weights (``weights``), hooks, caching and
    splicing (``hooks``), generation (``generation``).
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
        self.blocks = nn.ModuleList(block(architecture, layer) for layer in range(architecture.n_layers))
        self.ln_final = Norm(architecture)
        self.unembed = Unembed(architecture)
        self.setup()

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.embed.W_E.device

    @property
    def block_devices(self) -> tuple[torch.device, ...]:
        """The device of each block; all ``model.device`` unless the model was placed across
        devices (``load_model(..., device_map=...)`` or ``place``)."""
        return tuple(next(block.parameters()).device for block in self.blocks)

    def place(self, device_map: DeviceMap) -> HookedLM:
        """Spread the blocks over devices: ``"auto"`` (balanced over every GPU) or
        ``{block_index: device}``. Embedding, final norm and unembedding go to the first
        GPU ("auto") or block 0's device, which becomes ``model.device``: inputs go there, outputs and cached
        activations come back there. Returns the model.

        Example:
            >>> model.place({0: "cuda:0", 1: "cuda:1"})
            >>> model(tokens).device     # cuda:0
        """
        place_blocks(self, *resolve_device_map(self, device_map))
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.W_E.dtype

    @property
    def cfg(self) -> ModelConfigView:
        """The TransformerLens config view that ``ActivationCache`` and ``patching`` read.

        Writes to TL's runtime switches take effect (``model.cfg.use_attn_result = True``
        calls ``set_use_attn_result``); writes to any other field raise (see ``tl_config``).
        """
        arch = self.architecture
        rms = arch.norm == "rmsnorm"
        return ModelConfigView(
            self,
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
        attention_mask: Shaped[Tensor, "batch _pos"] | None = None,
        tokens: Int[Tensor, "batch pos"] | None = None,
        past: KeyValuePrefix | None = None,
        logit_positions: Int[Tensor, "batch _pos"] | None = None,
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] = "right",
    ) -> Any:
        """Run the model.

        Args:
            input: text, token ids ``[batch, pos]``, or, with ``start_at_layer`` (0
                included), the residual stream ``[batch, pos, d_model]`` entering that block.
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
        if start == 0 and not (start_at_layer is not None and input.is_floating_point()):
            tokens = self._check_tokens(input)
            residual = None
        else:
            residual = self._check_residual(input)
        batch, n_pos = input.shape[:2]
        offset = 0 if past is None else past.length
        if past is not None and past.batch != batch:
            raise ValueError(f"past holds {past.batch} rows but the input has {batch}")
        mask = self._check_mask(attention_mask, batch, offset + n_pos)
        context = self.attention_context(mask, n_pos=offset + n_pos, offset=offset)
        if residual is None:
            residual = self.embed_tokens(tokens, context.positions)
        residual = self.run_blocks(residual, context, start=start, stop=stop, past=past)
        if stop_at_layer is not None:
            return residual
        if return_type is None:
            self.ln_final(residual)  # as in TL: ln_final's hooks fire (its scale is cached)
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

    def embed_tokens(
        self, tokens: Int[Tensor, "batch pos"], positions: Int[Tensor, "#batch pos"]
    ) -> Float[Tensor, "batch pos d_model"]:
        """The residual stream entering block 0 (token plus learned position embeddings)."""
        residual = self.hook_embed(self.embed(tokens))
        if self.pos_embed is not None:
            positions = positions.expand(tokens.shape[0], -1)  # a shared row serves every example
            residual = residual + self.hook_pos_embed(self.pos_embed(positions))
        return residual

    def attention_context(
        self, mask: Int[Tensor, "batch pos"] | None, *, n_pos: int | None = None, offset: int = 0
    ) -> AttentionContext:
        """Positions, allowed query-key pairs and rotary tables for the queries at positions
        ``offset:`` of a run with attention mask ``mask`` (``None``: no padding; then give
        ``n_pos``, and one shared row serves every example). What every block needs besides
        the residual stream."""
        if mask is None:
            if n_pos is None:
                raise ValueError("attention_context needs n_pos when mask is None")
            positions = torch.arange(offset, n_pos, device=self.device)[None]
            allowed = self._allowed_attention(n_pos, None)[:, :, offset:]
        else:
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, offset:]
            allowed = self._allowed_attention(mask.shape[1], mask)[:, :, offset:]
        rotary = self.rotary(positions) if self.rotary is not None else None
        return AttentionContext(positions, allowed, rotary)

    def run_blocks(
        self,
        residual: Float[Tensor, "batch pos d_model"] | None,
        context: AttentionContext,
        *,
        start: int = 0,
        stop: int | None = None,
        past: KeyValuePrefix | None = None,
        entering: dict[int, Float[Tensor, "_batch pos d_model"]] | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """Run blocks ``start`` to ``stop - 1``: the one block loop of the model, used by
        ``forward`` and by every batched executor.

        ``entering`` maps a layer to rows ``[n, pos, d_model]`` appended to the batch just
        before that layer (``stop`` included: rows entering after the last block run);
        rows that enter late skip the earlier blocks. ``context`` and ``past`` describe all
        rows, in the order they end up in (the rows present first, then each entering
        group), so a block running ``n`` rows uses their first ``n``.

        Example:
            >>> context = model.attention_context(None, n_pos=tokens.shape[1])
            >>> resid = model.run_blocks(model.embed_tokens(tokens, context.positions), context, stop=4)
        """
        stop = self.architecture.n_layers if stop is None else stop
        entering = entering or {}
        for layer in range(start, stop + 1):
            if layer in entering:
                rows = entering[layer]
                residual = rows if residual is None else torch.cat([residual, rows.to(residual.device)])
            if layer == stop:
                break
            block = self.blocks[layer]
            device = next(block.parameters()).device  # blocks may sit on different devices
            if residual.device != device:
                residual = residual.to(device)
            if context.positions.device != device:
                context = context.to(device)
            n = residual.shape[0]
            layer_past = None if past is None else past.layer(layer, rows=n)
            if layer_past is not None and layer_past[0].device != device:
                layer_past = (layer_past[0].to(device), layer_past[1].to(device))
            residual = block(residual, context.rows(n), layer_past)
        return residual if residual.device == self.device else residual.to(self.device)

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

    def _check_mask(self, mask: Tensor | None, batch: int, n_pos: int) -> Int[Tensor, "batch pos"] | None:
        if n_pos > self.architecture.n_ctx:
            raise ValueError(
                f"sequence of {n_pos} tokens is longer than the context ({self.architecture.n_ctx})"
            )
        if mask is None:
            return None
        if tuple(mask.shape) != (batch, n_pos):
            raise ValueError(
                f"attention_mask shape {tuple(mask.shape)} does not match input {(batch, n_pos)}"
            )
        return mask.to(self.device, torch.long)

    def _allowed_attention(
        self, n_pos: int, mask: Int[Tensor, "batch pos"] | None
    ) -> Bool[Tensor, "batch 1 q_pos k_pos"]:
        """Causal pairs, and real keys only where ``mask`` is given; ``[1, 1, q, k]``
        without a mask. Sliding windows are per layer (``AttentionContext.score_bias``)."""
        idx = torch.arange(n_pos, device=self.device)
        allowed = (idx[None, :] <= idx[:, None])[None, None]
        return allowed if mask is None else allowed & mask.bool()[:, None, None, :]

    @staticmethod
    def _next_token_loss(logits: Tensor, tokens: Tensor | None, mask: Tensor | None) -> Tensor:
        if tokens is None:
            raise ValueError("return_type='loss' with start_at_layer needs tokens=... for the targets")
        if mask is None:
            mask = torch.ones_like(tokens)
        predicted = logits[:, :-1].flatten(0, 1)
        keep = (mask[:, :-1] * mask[:, 1:]).flatten().bool()
        return F.cross_entropy(predicted[keep], tokens[:, 1:].flatten()[keep])
