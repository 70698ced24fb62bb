"""Tokenizer helpers of ``HookedLM`` (TransformerLens names and meanings)."""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Int
from torch import Tensor

TextInput = str | list[str]


def id_label(token_id: int) -> str:
    """How a token is shown when there is no tokenizer to decode it: ``<id 36>``."""
    return f"<id {token_id}>"


def token_labels(tokenizer, ids: list[int]) -> list[str]:
    """Each token decoded on its own, or ``<id N>`` labels when ``tokenizer`` is ``None``
    (never empty strings that hide which token it was).

    Example:
        >>> token_labels(None, [1, 36])
        ['<id 1>', '<id 36>']
    """
    if tokenizer is None:
        return [id_label(i) for i in ids]
    return [tokenizer.decode([i]) for i in ids]


class TokenizationMixin:
    """``to_tokens``, ``to_str_tokens``, ``to_string``, ``to_single_token``.

    BOS handling is explicit: text is encoded without the tokenizer's own special tokens
    and the model's BOS token is prepended when ``prepend_bos`` is true (default
    ``default_prepend_bos``), so the same call gives the same tokens for every family.
    """

    tokenizer: object | None
    default_prepend_bos: bool = True

    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError(
                "this model has no tokenizer, so it cannot read or write text: pass token ids, or "
                "load it with one (load_model(path_or_hf_model, tokenizer=AutoTokenizer.from_pretrained(...)))"
            )
        return self.tokenizer

    def encode(
        self,
        text: TextInput,
        *,
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] = "right",
    ) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
        """Tokens and attention mask (1 = real token) for one string or a batch of strings.

        Example:
            >>> tokens, mask = model.encode(["a b", "a b c d"], padding_side="left")
        """
        tokenizer = self._require_tokenizer()
        texts = [text] if isinstance(text, str) else list(text)
        prepend = self.default_prepend_bos if prepend_bos is None else prepend_bos
        ids = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
        if prepend:
            if tokenizer.bos_token_id is None:
                raise ValueError("prepend_bos=True but the tokenizer has no BOS token")
            ids = [[tokenizer.bos_token_id, *row] for row in ids]
        width = max(len(row) for row in ids)
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        tokens = torch.full((len(ids), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(ids):
            span = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
            tokens[i, span] = torch.tensor(row, dtype=torch.long)
            mask[i, span] = 1
        return tokens.to(self.device), mask.to(self.device)

    def to_tokens(
        self,
        text: TextInput,
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] = "right",
        move_to_device: bool = True,
    ) -> Int[Tensor, "batch pos"]:
        """Token ids ``[batch, pos]`` for a string or a list of strings (padded).

        Example:
            >>> model.to_tokens("Hello world").shape
            torch.Size([1, 3])
        """
        tokens, _ = self.encode(text, prepend_bos=prepend_bos, padding_side=padding_side)
        return tokens if move_to_device else tokens.cpu()

    def to_string(
        self, tokens: Int[Tensor, "*batch pos"] | Int[Tensor, ""] | list[int] | int
    ) -> str | list[str]:
        """Decode token ids; a 2-D tensor gives one string per row."""
        tokenizer = self._require_tokenizer()
        if isinstance(tokens, Tensor) and tokens.ndim == 2:
            return [tokenizer.decode(row.tolist()) for row in tokens]
        if isinstance(tokens, Tensor):
            tokens = tokens.tolist()
        return tokenizer.decode(tokens if isinstance(tokens, list) else [tokens])

    def to_str_tokens(
        self, text: str | list[str] | Int[Tensor, "*batch pos"], prepend_bos: bool | None = None
    ) -> list[str] | list[list[str]]:
        """One string per token of a single prompt (or of a 1-D / ``[1, pos]`` token tensor);
        a list of prompts gives one such list per prompt (unpadded), as in TransformerLens.

        Example:
            >>> model.to_str_tokens("Hello world")
            ['<|im_start|>', 'Hello', ' world']
            >>> model.to_str_tokens(["Hi", "Hello world"])
            [['<|im_start|>', 'Hi'], ['<|im_start|>', 'Hello', ' world']]
        """
        if isinstance(text, list):
            return [self.to_str_tokens(item, prepend_bos=prepend_bos) for item in text]
        tokens = self.to_tokens(text, prepend_bos=prepend_bos)[0] if isinstance(text, str) else text
        if tokens.ndim == 2:
            if tokens.shape[0] != 1:
                raise ValueError(f"to_str_tokens takes one prompt, got a batch of {tokens.shape[0]}")
            tokens = tokens[0]
        tokenizer = self._require_tokenizer()
        return [tokenizer.decode([t]) for t in tokens.tolist()]

    def to_single_token(self, text: str) -> int:
        """The id of a string that is exactly one token (e.g. ``" Mary"``).

        Raises:
            ValueError: if the string is not exactly one token, naming its tokens.
        """
        ids = self._require_tokenizer().encode(text, add_special_tokens=False)
        if len(ids) != 1:
            pieces = [self.tokenizer.decode([i]) for i in ids]
            raise ValueError(f"{text!r} is {len(ids)} tokens, not one: {pieces}")
        return ids[0]
