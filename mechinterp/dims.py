"""The axis vocabulary: one name per tensor axis, used in every jaxtyping annotation.

=========  ==========================================================
name       meaning
=========  ==========================================================
batch      examples (prompts) in a forward pass
row        rows of a batched forward (cells x examples, in patching)
pos        token positions (``q_pos`` / ``k_pos`` inside attention)
layer      transformer blocks
head       attention (query) heads
kv_head    key/value heads (fewer than ``head`` under grouped-query attention)
d_model    residual stream width
d_head     per-head width
d_mlp      MLP hidden width
d_vocab    vocabulary size
cell       one patch cell of a sweep
d_in       width an SAE / transcoder reads (``*batch d_in``: any leading axes)
d_sae      SAE latents (features)
d_out      width a transcoder writes (``d_in`` for an SAE)
=========  ==========================================================

The aliases below are the shapes that recur across modules.

Example:
    >>> from mechinterp.dims import Residual
    >>> Residual
    <class 'jaxtyping.Float[Tensor, 'batch pos d_model']'>
"""

from jaxtyping import Float, Int
from torch import Tensor

Tokens = Int[Tensor, "batch pos"]
Residual = Float[Tensor, "batch pos d_model"]
Logits = Float[Tensor, "batch pos d_vocab"]
AttentionMask = Int[Tensor, "batch pos"]

__all__ = ["AttentionMask", "Logits", "Residual", "Tokens"]
