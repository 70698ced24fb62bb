"""Chat models that explain and score: a local ``HookedLM`` or an OpenAI-compatible endpoint.

Both answer two batched questions, and neither raises for one bad item: a failed item comes
back as a ``ChatError`` in its place, so a run records it and keeps everything else.

- ``complete(conversations, max_tokens=...)``: greedy replies (the explainer);
- ``choice_probs(conversations, choices)``: the probability of each answer in ``choices``
  (``["Yes", "No"]``, ``["0", ..., "10"]``) as the reply's first token(s), normalised over the
  choices (the scorers).

``LocalChat`` formats conversations with the tokenizer's chat template
(``tokenizer.apply_chat_template``; SmolLM2-Instruct ships one), decodes with a key/value
cache, and computes choice probabilities exactly: a choice whose tokens extend another (``"10"``
after ``"1"`` on a digit-splitting tokenizer) gets the product of its token probabilities, and
the shorter one what is left.

``OpenAIChat`` speaks to vLLM, llama.cpp's server, Ollama, hosted APIs or ``mechinterp serve``
through the ``openai`` package, with an on-disk response cache keyed by model and request,
retries, a timeout and a concurrency limit. Choice probabilities come from ``top_logprobs``.

Example:
    >>> chat = LocalChat(mechinterp.load_model("smollm2-135m"))
    >>> chat.complete([[{"role": "user", "content": "Say hi"}]], max_tokens=5)
    ['Hi! How can I']
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from mechinterp.models.prefix import KeyValuePrefix

Message = dict[str, str]
Conversation = list[Message]


class ChatError(Exception):
    """One request that failed (endpoint unreachable, malformed reply, ...); ``kind`` says which."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(f"{kind}: {message}")


@runtime_checkable
class ChatModel(Protocol):
    """What explainers and scorers need from a chat model."""

    name: str

    def complete(
        self, conversations: Sequence[Conversation], *, max_tokens: int
    ) -> list[str | ChatError]: ...

    def choice_probs(
        self, conversations: Sequence[Conversation], choices: Sequence[str]
    ) -> list[np.ndarray | ChatError]: ...


# ---------------------------------------------------------------------------------------- local


class LocalChat:
    """A ``HookedLM`` as a chat model (greedy decoding; exact choice probabilities).

    Models whose tokenizer has no chat template (the tiny test models) get a plain
    ``role: content`` transcript ending in ``assistant:``.
    """

    def __init__(self, model, *, batch_size: int = 8, name: str | None = None, progress: bool = True):
        self.model = model
        self.progress = progress
        self.tokenizer = model._require_tokenizer()
        self.batch_size = batch_size
        self.name = name or model.architecture.model_name
        self.n_ctx = model.architecture.n_ctx
        stops = {self.tokenizer.eos_token_id, self.tokenizer.convert_tokens_to_ids("<|im_end|>")}
        self.stop_ids = {s for s in stops if isinstance(s, int) and s != self.tokenizer.unk_token_id}

    def render(self, conversation: Conversation) -> list[int]:
        """Token ids of ``conversation`` followed by the assistant's turn."""
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=True
            )
            return self.tokenizer.encode(text, add_special_tokens=False)
        text = "".join(f"{m['role']}: {m['content']}\n" for m in conversation) + "assistant:"
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        bos = self.tokenizer.bos_token_id
        return ids if bos is None else [bos, *ids]

    # ------------------------------------------------------------------ generation
    def complete(self, conversations: Sequence[Conversation], *, max_tokens: int) -> list[str | ChatError]:
        out: list[str | ChatError] = []
        for conversation in _bar(conversations, f"{self.name} replies", self.progress):
            prompt = self.render(conversation)
            if len(prompt) + max_tokens > self.n_ctx:
                out.append(self._too_long(prompt, max_tokens))
                continue
            try:
                ids, _ = self.generate(prompt, max_tokens=max_tokens)
            except RuntimeError as error:  # e.g. out of memory: this item fails, the others go on
                out.append(ChatError("model error", f"{type(error).__name__}: {error}"))
                continue
            out.append(self.tokenizer.decode(ids, skip_special_tokens=True))
        return out

    def _too_long(self, prompt: list[int], extra: int) -> ChatError:
        return ChatError(
            "too long",
            f"the prompt has {len(prompt)} tokens (+{extra}); {self.name} reads at most {self.n_ctx}",
        )

    @torch.no_grad()
    def generate(
        self, prompt: list[int], *, max_tokens: int, top_logprobs: int = 0
    ) -> tuple[list[int], list[tuple[float, list[tuple[int, float]]]]]:
        """Greedy continuation of ``prompt`` (stops at end of turn) with a key/value cache.

        Returns the new token ids and, per token, its log-probability and the
        ``top_logprobs`` most likely ``(token id, log-probability)`` pairs.
        """
        model = self.model
        names = KeyValuePrefix.hook_filter(model)
        tokens = torch.tensor([prompt], device=model.device)
        past, new, steps = None, [], []
        for _ in range(max_tokens):
            logits, cache = model.run_with_cache(tokens, names_filter=names, past=past)
            fresh = KeyValuePrefix.from_cache(cache, model, tokens.shape[1])
            past = fresh if past is None else _concat(past, fresh)
            logprobs = logits[0, -1].float().log_softmax(-1)
            token = int(logprobs.argmax())
            if token in self.stop_ids:
                break
            top = logprobs.topk(top_logprobs) if top_logprobs else None
            alternatives = (
                [] if top is None else list(zip(top.indices.tolist(), top.values.tolist(), strict=True))
            )
            new.append(token)
            steps.append((float(logprobs[token]), alternatives))
            tokens = torch.tensor([[token]], device=model.device)
        return new, steps

    # ------------------------------------------------------------------ choices
    @torch.no_grad()
    def choice_probs(
        self, conversations: Sequence[Conversation], choices: Sequence[str]
    ) -> list[np.ndarray | ChatError]:
        sequences = [tuple(self.tokenizer.encode(c, add_special_tokens=False)) for c in choices]
        if any(not s for s in sequences) or len(set(sequences)) != len(sequences):
            raise ValueError(f"choices must be distinct non-empty strings, got {list(choices)}")
        prefixes = sorted({s[:i] for s in sequences for i in range(len(s))}, key=len)
        longest = max(len(s) for s in sequences)
        rendered = [self.render(c) for c in conversations]
        out: list[np.ndarray | ChatError] = [
            self._too_long(p, longest) if len(p) + longest > self.n_ctx else None for p in rendered
        ]
        fits = [i for i, o in enumerate(out) if o is None]
        batches = [fits[start : start + self.batch_size] for start in range(0, len(fits), self.batch_size)]
        for rows in _bar(batches, f"{self.name} answers ({self.batch_size} a step)", self.progress):
            prompts = [rendered[i] for i in rows]
            try:
                dists = {p: self._next_token_probs([[*q, *p] for q in prompts]) for p in prefixes}
            except RuntimeError as error:  # e.g. out of memory: this batch fails, the others go on
                for i in rows:
                    out[i] = ChatError("model error", f"{type(error).__name__}: {error}")
                continue
            probs = torch.stack([_sequence_prob(s, sequences, dists) for s in sequences], dim=1)
            probs = probs / probs.sum(dim=1, keepdim=True).clamp_min(1e-30)
            for i, row in zip(rows, probs.double().cpu().numpy(), strict=True):
                out[i] = row
        return out

    def _next_token_probs(self, prompts: list[list[int]]) -> Tensor:
        """Next-token probabilities ``[batch, d_vocab]`` after each prompt (left-padded batch)."""
        width = max(len(p) for p in prompts)
        tokens = torch.zeros(len(prompts), width, dtype=torch.long)
        mask = torch.zeros_like(tokens)
        for i, p in enumerate(prompts):
            tokens[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        positions = torch.full((len(prompts), 1), width - 1)
        logits = self.model(
            tokens.to(self.model.device), attention_mask=mask.to(self.model.device), logit_positions=positions
        )
        return logits[:, 0].float().softmax(-1)


def _sequence_prob(sequence: tuple[int, ...], sequences, dists: dict[tuple, Tensor]) -> Tensor:
    """P(reply starts with ``sequence`` and, if a longer choice extends it, stops there)."""
    prob = torch.ones_like(next(iter(dists.values()))[:, 0])
    for i, token in enumerate(sequence):
        prob = prob * dists[sequence[:i]][:, token]
    longer = {
        s[len(sequence)] for s in sequences if len(s) > len(sequence) and s[: len(sequence)] == sequence
    }
    if longer:
        prob = prob * (1 - dists[sequence][:, sorted(longer)].sum(dim=1))
    return prob


def _concat(past: KeyValuePrefix, fresh: KeyValuePrefix) -> KeyValuePrefix:
    return KeyValuePrefix(
        tuple(torch.cat([a, b], dim=1) for a, b in zip(past.keys, fresh.keys, strict=True)),
        tuple(torch.cat([a, b], dim=1) for a, b in zip(past.values, fresh.values, strict=True)),
    )


# ---------------------------------------------------------------------------------------- HTTP


class ResponseCache:
    """JSON replies on disk, one file per sha256 of (model, request)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(model: str, request: dict) -> str:
        return hashlib.sha256(json.dumps([model, request], sort_keys=True).encode()).hexdigest()

    def get(self, key: str):
        path = self.folder / f"{key}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def put(self, key: str, value) -> None:
        handle, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        with os.fdopen(handle, "w") as f:
            json.dump(value, f)
        os.replace(tmp, self.folder / f"{key}.json")


class OpenAIChat:
    """An OpenAI-compatible chat endpoint (``/v1/chat/completions``).

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1`` (vLLM, llama.cpp server, Ollama,
            ``mechinterp serve``) or a hosted API.
        model: the model name the endpoint serves.
        api_key_env: environment variable holding the key (unset: no key is sent).
        cache_dir: folder of cached replies (``None``: no cache).
        timeout: seconds per request; max_retries: retries on connection errors, 408/409/429/5xx
            (the ``openai`` package's exponential back-off).
        concurrency: requests in flight at once.
        progress: show a bar of finished requests.

    Example:
        >>> chat = OpenAIChat("http://127.0.0.1:8000/v1", "smollm2-135m", cache_dir="runs/cache")
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        cache_dir: str | Path | None = None,
        timeout: float | int = 60.0,
        max_retries: int = 2,
        concurrency: int = 4,
        top_logprobs: int = 20,
        progress: bool = True,
    ):
        try:
            import openai
        except ModuleNotFoundError as error:
            raise ModuleNotFoundError(
                "OpenAIChat needs the openai package: pip install 'mechinterp[explain]'"
            ) from error
        self.openai = openai
        self.base_url, self.name = base_url, model
        self.client = openai.OpenAI(
            base_url=base_url,
            api_key=os.environ.get(api_key_env) or "not-set",
            timeout=timeout,
            max_retries=max_retries,
        )
        self.cache = None if cache_dir is None else ResponseCache(cache_dir)
        self.concurrency = concurrency
        self.top_logprobs = top_logprobs
        self.progress = progress

    def complete(self, conversations: Sequence[Conversation], *, max_tokens: int) -> list[str | ChatError]:
        requests = [{"messages": c, "max_tokens": max_tokens, "temperature": 0.0} for c in conversations]
        return self._run(requests, _reply_text)

    def choice_probs(
        self, conversations: Sequence[Conversation], choices: Sequence[str]
    ) -> list[np.ndarray | ChatError]:
        requests = [
            {
                "messages": c,
                "max_tokens": 2,
                "temperature": 0.0,
                "logprobs": True,
                "top_logprobs": self.top_logprobs,
            }
            for c in conversations
        ]
        return self._run(requests, lambda reply: _reply_choice_probs(reply, list(choices)))

    def _run(self, requests: list[dict], parse) -> list:
        def one(request: dict):
            key = None if self.cache is None else ResponseCache.key(self.name, request)
            reply = None if key is None else self.cache.get(key)
            if reply is None:
                try:
                    reply = self.client.chat.completions.create(model=self.name, **request).model_dump()
                except self.openai.APIConnectionError as error:
                    kind = "timeout" if isinstance(error, self.openai.APITimeoutError) else "unreachable"
                    return ChatError(kind, f"cannot reach {self.base_url} ({error}); is the server running?")
                except self.openai.APIStatusError as error:
                    return ChatError(
                        f"http {error.status_code}", f"{self.base_url} answered: {error.message}"
                    )
                except self.openai.APIError as error:
                    return ChatError("malformed", f"{self.base_url} sent an unreadable reply: {error}")
            try:
                value = parse(reply)
            except (KeyError, IndexError, TypeError, ValueError) as error:
                return ChatError("malformed", f"{self.base_url} sent a reply without {error}")
            if isinstance(value, ChatError):
                return value
            if key is not None:
                self.cache.put(key, reply)
            return value

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(_bar(pool.map(one, requests), f"{self.name} requests", self.progress, len(requests)))


def _bar(items, description: str, enabled: bool, total: int | None = None):
    """``items`` with a progress bar when ``enabled`` and there is more than one."""
    total = len(items) if total is None else total
    return tqdm(items, total=total, desc=description, disable=not enabled or total < 2)


def _reply_text(reply: dict) -> str:
    content = reply["choices"][0]["message"]["content"]
    if not isinstance(content, str):
        raise ValueError("choices[0].message.content")
    return content


def _answer_from_text(text: str, choices: list[str]) -> np.ndarray | ChatError:
    """A hard answer (probability 1) from a reply without logprobs: the longest choice the
    reply starts with, as a whole word (``"10."`` is ``"10"``, ``"Yes, it does"`` is ``"Yes"``).
    AUCs from such answers are those of the hard labels."""
    words = text.strip().lstrip("*\"'`").lower()
    found = [
        i
        for i, choice in enumerate(choices)
        if words.startswith(choice.lower()) and not words[len(choice) : len(choice) + 1].isalnum()
    ]
    if not found:
        return ChatError(
            "no logprobs",
            f"the endpoint returned no logprobs and the reply {text[:60]!r} starts with none of {choices}",
        )
    probs = np.zeros(len(choices))
    probs[max(found, key=lambda i: len(choices[i]))] = 1.0
    return probs


def _reply_choice_probs(reply: dict, choices: list[str]) -> np.ndarray | ChatError:
    """Probabilities of ``choices`` from the reply's ``top_logprobs``.

    A top token counts for the one choice it equals or uniquely begins (``"Y"`` for
    ``"Yes"`` on a character tokenizer). A token that is a choice and also begins longer ones
    (``"1"`` and ``"10"``) is split with the second position's probabilities when the reply's
    greedy first token is that token, and counts for itself otherwise. An endpoint that sends
    no logprobs gets its reply text read instead (``_answer_from_text``).
    """
    content = (reply["choices"][0].get("logprobs") or {}).get("content")
    if not content:
        return _answer_from_text(_reply_text(reply), choices)

    def table(position: dict) -> dict[str, float]:
        probs: dict[str, float] = {}
        for entry in position["top_logprobs"]:
            text = entry["token"].strip()
            probs[text] = probs.get(text, 0.0) + math.exp(entry["logprob"])
        return probs

    probs = np.zeros(len(choices))
    head = content[0]["token"].strip()
    for token, p in table(content[0]).items():
        starting = [i for i, c in enumerate(choices) if token and c.startswith(token)]
        if token in choices and len(starting) > 1 and token == head and len(content) > 1:
            second = table(content[1])
            longer = [i for i in starting if choices[i] != token]
            tails = [second.get(choices[i][len(token) :], 0.0) for i in longer]
            for i, tail in zip(longer, tails, strict=True):
                probs[i] += p * tail
            probs[choices.index(token)] += p * max(0.0, 1 - sum(tails))
        elif token in choices:
            probs[choices.index(token)] += p
        elif len(starting) == 1:
            probs[starting[0]] += p
    if probs.sum() <= 0:
        return ChatError("no choice", f"none of {choices} is among the reply's top tokens")
    return probs / probs.sum()
