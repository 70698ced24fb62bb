"""Architecture description of a native hooked transformer.

One frozen dataclass says everything the forward pass needs to know about a model's
shape and maths; it never holds runtime switches (those live on the model, e.g.
``HookedLM.set_use_attn_result``). Families (``families.py``) build it from a Hugging
Face config.

Example:
    >>> cfg = ArchitectureConfig(n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=256,
    ...                          d_vocab=100, n_ctx=128, act_fn="gelu_new")
    >>> cfg.kv_heads, cfg.heads_per_kv_head
    (4, 1)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, kw_only=True)
class ArchitectureConfig:
    """Shape and maths of one transformer.

    Attributes:
        n_layers, d_model, n_heads, d_head, d_mlp, d_vocab: sizes.
        n_ctx: the longest sequence the model accepts.
        n_kv_heads: key/value heads; ``None`` means as many as query heads (MHA).
        norm: ``"layernorm"`` (mean-centred, with bias) or ``"rmsnorm"``.
        norm_eps: epsilon inside the norm's square root.
        positional: ``"learned"`` absolute embeddings or ``"rotary"`` (RoPE).
        rotary_dim: leading dims of each head that are rotated (partial rotary, NeoX);
            ``None`` means all of ``d_head``.
        rotary_base: RoPE base theta (used when a loader does not supply ``inv_freq``).
        mlp: ``"standard"`` (act(x W_in) W_out) or ``"gated"`` (act(x W_gate) * (x W_in) W_out).
        act_fn: activation name as Hugging Face spells it (``"gelu_new"``, ``"silu"``, ...).
        parallel_attn_mlp: attention and MLP both read the block input (GPT-NeoX, GPT-J).
        attn_only: blocks have no MLP (``resid_post = resid_pre + attn_out``; no ``ln2``, no
            ``hook_resid_mid`` and no MLP hooks, as in TransformerLens' attention-only models).
            Needs ``d_mlp=0``; ``act_fn`` and ``mlp`` are then unused.
        sliding_window: attend to at most this many previous positions (Mistral); ``None`` = off.
        layer_types: per layer, ``"sliding"`` (uses ``sliding_window``) or ``"full"`` attention
            (Gemma 2/3, Qwen3 with ``max_window_layers``); ``None`` means every layer slides when
            ``sliding_window`` is set.
        attn_scale: multiplier on q.k; ``None`` means ``d_head ** -0.5`` (Gemma:
            ``query_pre_attn_scalar ** -0.5``).
        attn_softcap: attention scores become ``c * tanh(scores / c)`` before masking (Gemma 2).
        final_softcap: logits become ``c * tanh(logits / c)`` (Gemma 2).
        qk_norm: RMSNorm on queries and keys before rotary: over each head's ``d_head``
            (``"head"``: Qwen3, Gemma 3) or over the whole projection (``"projection"``: OLMo 2).
        block_norms: where the sublayer norms sit: ``"pre"`` (``x + f(ln(x))``), ``"sandwich"``
            (``x + ln_post(f(ln(x)))``, Gemma 2/3) or ``"post"`` (``x + ln_post(f(x))``, OLMo 2).
        embed_scale: multiplier on token embeddings (Gemma: ``sqrt(d_model)``); ``None`` = 1.
        rotary_style: ``"half"`` (rotate halves, Llama/NeoX) or ``"interleaved"`` (rotate
            adjacent pairs, GPT-J).
        rotary_base_local: RoPE base of the sliding layers when it differs from the full
            layers' (Gemma 3); ``None`` = the same tables everywhere.
        model_name: a label for reprs and result metadata.
    """

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    act_fn: str
    n_kv_heads: int | None = None
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = 1e-5
    positional: Literal["learned", "rotary"] = "learned"
    rotary_dim: int | None = None
    rotary_base: float = 10000.0
    mlp: Literal["standard", "gated"] = "standard"
    parallel_attn_mlp: bool = False
    attn_only: bool = False
    sliding_window: int | None = None
    layer_types: tuple[Literal["full", "sliding"], ...] | None = None
    attn_scale: float | None = None
    attn_softcap: float | None = None
    final_softcap: float | None = None
    qk_norm: Literal["head", "projection"] | None = None
    block_norms: Literal["pre", "sandwich", "post"] = "pre"
    embed_scale: float | None = None
    rotary_style: Literal["half", "interleaved"] = "half"
    rotary_base_local: float | None = None
    model_name: str = "custom"

    def __post_init__(self) -> None:
        if self.n_kv_heads is not None and self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.rotary_dim is not None and (self.rotary_dim > self.d_head or self.rotary_dim % 2):
            raise ValueError(f"rotary_dim ({self.rotary_dim}) must be even and <= d_head ({self.d_head})")
        if self.attn_only and (self.d_mlp or self.parallel_attn_mlp):
            raise ValueError(
                f"an attention-only model has no MLP: use d_mlp=0 and parallel_attn_mlp=False "
                f"(got d_mlp={self.d_mlp}, parallel_attn_mlp={self.parallel_attn_mlp})"
            )
        if self.layer_types is not None:
            if len(self.layer_types) != self.n_layers:
                raise ValueError(
                    f"layer_types has {len(self.layer_types)} entries for {self.n_layers} layers"
                )
            if "sliding" in self.layer_types and self.sliding_window is None:
                raise ValueError("layer_types has sliding layers but sliding_window is None")

    def window(self, layer: int) -> int | None:
        """The sliding window of ``layer``'s attention (``None``: it sees every earlier position)."""
        if self.layer_types is not None and self.layer_types[layer] == "full":
            return None
        return self.sliding_window

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (``n_heads`` for ordinary multi-head attention)."""
        return self.n_kv_heads or self.n_heads

    @property
    def heads_per_kv_head(self) -> int:
        """How many query heads share one key/value head (1 without GQA)."""
        return self.n_heads // self.kv_heads

    @property
    def scale(self) -> float:
        """The factor applied to query-key dot products."""
        return self.attn_scale if self.attn_scale is not None else self.d_head**-0.5
