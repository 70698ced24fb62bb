"""Transformer blocks: attention then MLP (sequential, or parallel as in GPT-NeoX and GPT-J),
or attention alone (attention-only models, ``ArchitectureConfig.attn_only``).

Sublayer norms follow ``ArchitectureConfig.block_norms``: ``"pre"`` normalises each sublayer's
input (``ln1``, ``ln2``); ``"sandwich"`` also normalises its output (``ln1_post``,
``ln2_post``: Gemma 2/3); ``"post"`` normalises only the output (OLMo 2: no ``ln1``/``ln2``).
Output norms sit before ``hook_attn_out`` / ``hook_mlp_out`` (where TransformerLens places
``ln1_post``), so the residual stream stays the sum of the sublayer outputs.
"""

from __future__ import annotations

from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from mechinterp.dims import Residual
from mechinterp.models.attention import Attention, AttentionContext
from mechinterp.models.config import ArchitectureConfig
from mechinterp.models.layers import MLP, Norm


def _norm(norm: Norm | None, x: Tensor) -> Tensor:
    """``norm(x)``, or ``x`` where the block has no norm at that place."""
    return x if norm is None else norm(x)


class AttentionOnlyBlock(nn.Module):
    """``resid_post = resid_pre + attn(ln1(resid_pre))``: a block without an MLP.

    Like TransformerLens' attention-only blocks it has no ``ln2``, no ``hook_resid_mid``
    and no MLP hooks.

    With ``use_split_qkv_input`` on, the block feeds each head its own copy of the
    residual stream through ``hook_q_input`` / ``hook_k_input`` / ``hook_v_input``
    (``[batch, pos, head or kv_head, d_model]``) and normalises each copy separately, so
    a hook can change one head's input alone (path patching).
    """

    def __init__(self, cfg: ArchitectureConfig, layer: int = 0):
        super().__init__()
        self.cfg = cfg
        self.use_split_qkv_input = False
        self.ln1 = Norm(cfg) if cfg.block_norms != "post" else None
        self.ln1_post = Norm(cfg) if cfg.block_norms != "pre" else None
        self.attn = Attention(cfg, layer, post_norm=self.ln1_post)
        for name in ("resid_pre", "resid_post", "attn_out", "q_input", "k_input", "v_input"):
            setattr(self, f"hook_{name}", HookPoint())

    def attention(
        self,
        resid_pre: Residual,
        context: AttentionContext,
        past: tuple[Tensor, Tensor] | None,
    ) -> Residual:
        """The attention sublayer's output (``hook_attn_out``) for an already hooked ``resid_pre``."""
        if self.use_split_qkv_input:
            heads, kv_heads = self.cfg.n_heads, self.cfg.kv_heads
            per_head = resid_pre[:, :, None]  # copies below: a hook may edit one head in place
            q_in = _norm(self.ln1, self.hook_q_input(per_head.repeat(1, 1, heads, 1)))
            k_in = _norm(self.ln1, self.hook_k_input(per_head.repeat(1, 1, kv_heads, 1)))
            v_in = _norm(self.ln1, self.hook_v_input(per_head.repeat(1, 1, kv_heads, 1)))
        else:
            q_in = k_in = v_in = _norm(self.ln1, resid_pre)
        return self.hook_attn_out(self.attn(q_in, k_in, v_in, context, past))

    def forward(
        self,
        resid_pre: Residual,
        context: AttentionContext,
        past: tuple[Tensor, Tensor] | None = None,
    ) -> Residual:
        resid_pre = self.hook_resid_pre(resid_pre)
        return self.hook_resid_post(resid_pre + self.attention(resid_pre, context, past))


class TransformerBlock(AttentionOnlyBlock):
    """``resid_mid = resid_pre + attn(ln1(resid_pre))``;
    ``resid_post = resid_mid + mlp(ln2(resid_mid))``, or ``mlp(ln2(resid_pre))`` when
    attention and MLP run in parallel (then ``resid_mid`` is only a checkpoint of the
    sum; the MLP does not read it). Per-head inputs work as in ``AttentionOnlyBlock``.
    """

    def __init__(self, cfg: ArchitectureConfig, layer: int = 0):
        super().__init__(cfg, layer)
        self.ln2 = Norm(cfg) if cfg.block_norms != "post" else None
        self.mlp = MLP(cfg)
        self.ln2_post = Norm(cfg) if cfg.block_norms != "pre" else None
        for name in ("resid_mid", "mlp_out", "mlp_in"):
            setattr(self, f"hook_{name}", HookPoint())

    def forward(
        self,
        resid_pre: Residual,
        context: AttentionContext,
        past: tuple[Tensor, Tensor] | None = None,
    ) -> Residual:
        resid_pre = self.hook_resid_pre(resid_pre)
        resid_mid = self.hook_resid_mid(resid_pre + self.attention(resid_pre, context, past))
        mlp_input = resid_pre if self.cfg.parallel_attn_mlp else resid_mid
        if self.use_split_qkv_input:  # the MLP's own copy: its gradient is then the MLP path's alone
            mlp_input = mlp_input.clone()
        mlp_input = self.hook_mlp_in(mlp_input)
        mlp_out = self.hook_mlp_out(_norm(self.ln2_post, self.mlp(_norm(self.ln2, mlp_input))))
        return self.hook_resid_post(resid_mid + mlp_out)
