"""The axis vocabulary: one name per tensor axis, used in every jaxtyping annotation.

=========  ==========================================================
name       meaning
=========  ==========================================================
batch      examples (prompts) in a forward pass
row        rows of a batched forward (cells x examples, in patching)
pos        token positions (``q_pos`` / ``k_pos`` inside attention)
q_pos      query positions of an attention pattern
k_pos      key positions of an attention pattern
layer      transformer blocks (or the layers a lens / probe reads)
head       attention (query) heads
kv_head    key/value heads (fewer than ``head`` under grouped-query attention)
d_model    residual stream width
d_head     per-head width
d_rot      rotary width of a head (``d_head`` or a fraction of it)
d_mlp      MLP hidden width
d_vocab    vocabulary size
cell       one patch cell of a sweep (``*cell``: the axes of a sweep's grid)
d_in       width an SAE / transcoder reads (``*batch d_in``: any leading axes)
d_sae      SAE latents (features)
d_out      width a transcoder writes (``d_in`` for an SAE)
example    examples of a data set, collected over many forward passes (probes, dashboards)
label      classes of a probe
component  components of a direct logit attribution (heads, MLPs, neurons, biases)
answer     answer tokens per example (several correct / incorrect candidates)
top        the ``k`` entries of a top-k
step       integration steps (integrated gradients)
variant    runs of one example that an objective combines (correct / incorrect continuation)
source     source nodes of a circuit graph (components that write)
edge       edges of a circuit graph
point      points of a curve (ROC thresholds, faithfulness edge counts)
item       items a ROC curve ranks (edges or nodes of a circuit graph)
node       nodes of an attribution graph (features, errors, tokens, logits)
feature    active transcoder features of an attribution graph (``(layer, pos, index)`` each)
logit      logit nodes of an attribution graph (their tokens)
slot       slots of a destination input (heads for per-head q/k/v inputs, else one)
flat       a flattened block of values (the trailing axes of a tensor, as one)
span       labelled groups of token positions (``PositionSpans``: one per position, or
           "io", "s1", ...), the position axis of position-aware circuits
=========  ==========================================================

jaxtyping's modifiers go around the names: ``*batch`` (any number of axes), ``#batch``
(broadcastable), ``_pos`` (documented but not checked, e.g. a second ``pos`` of another
length), ``...``, ``_`` and literal sizes. ``scripts/check_shapes.py`` checks that every
annotation in ``mechinterp`` and ``circuits`` uses only these names, and that the public
API annotates its tensors with shapes.

The aliases below are the shapes that recur across modules.

Example:
    >>> from mechinterp.dims import Residual
    >>> Residual
    <class 'jaxtyping.Float[Tensor, 'batch pos d_model']'>
"""

from jaxtyping import Float, Int, Shaped
from torch import Tensor

AXES = (
    "batch",
    "row",
    "pos",
    "q_pos",
    "k_pos",
    "layer",
    "head",
    "kv_head",
    "d_model",
    "d_head",
    "d_rot",
    "d_mlp",
    "d_vocab",
    "cell",
    "d_in",
    "d_sae",
    "d_out",
    "example",
    "label",
    "component",
    "answer",
    "top",
    "step",
    "variant",
    "source",
    "edge",
    "point",
    "item",
    "node",
    "feature",
    "logit",
    "slot",
    "flat",
    "span",
)

Tokens = Int[Tensor, "batch pos"]
Residual = Float[Tensor, "batch pos d_model"]
Logits = Float[Tensor, "batch pos d_vocab"]
AttentionMask = Shaped[Tensor, "batch pos"]  # 1 (or True) = real token, 0 = padding; any dtype
PerExample = Float[Tensor, " batch"]

__all__ = ["AXES", "AttentionMask", "Logits", "PerExample", "Residual", "Tokens"]
