"""Offline English text corpora for training SAEs, the tuned lens and collecting examples.

Three sources, all installed without network access to any hub:

- ``docstrings``: paragraphs of the Python standard library's docstrings (every machine with
  Python has them; read with ``ast``, nothing is imported). Technical English.
- ``wordnet``: WordNet 3.0 (Princeton; Debian package ``wordnet-base``): each synset as
  ``"Lemma: gloss. Example sentence."``, a few synsets per text. Plain English definitions
  and usage examples across every domain of the vocabulary.
- ``fortunes``: Debian's ``fortunes`` package: quotations, jokes and aphorisms from literature,
  science, politics and daily life. Ordinary English prose in many registers.

The ``default`` corpus **trains** on WordNet and docstrings mixed and **tests** on fortunes,
so held-out numbers measure transfer to text of a different source and style rather than
to more of the same. A single source (``name="wordnet"``) splits 90/10 by a hash of each text.

Install the Debian data with ``apt-get install fortunes wordnet-base`` (``scripts/setup.sh``
and CI do).

Example:
    >>> from mechinterp.data.corpus import load_corpus
    >>> train = load_corpus("default", "train")     # WordNet + docstrings
    >>> test = load_corpus("default", "test")       # fortunes: another source
"""

from __future__ import annotations

import ast
import hashlib
import random
import re
import sysconfig
from functools import cache
from pathlib import Path
from typing import Literal

Split = Literal["train", "test"]
Source = Literal["docstrings", "wordnet", "fortunes"]
CorpusName = Literal["default", "docstrings", "wordnet", "fortunes"]

WORDNET_DIR = Path("/usr/share/wordnet")
FORTUNES_DIR = Path("/usr/share/games/fortunes")
# prose collections of the fortunes package (art, code, chat logs and lists left out)
FORTUNE_FILES = (
    "education", "food", "fortunes", "humorists", "kids", "law", "literature", "love", "magic",
    "medicine", "miscellaneous", "news", "paradoxum", "people", "pets", "platitudes", "politics",
    "science", "sports", "wisdom", "work",
)  # fmt: skip
DEFAULT_SPLITS: dict[Split, tuple[Source, ...]] = {"train": ("wordnet", "docstrings"), "test": ("fortunes",)}
SYNSETS_PER_TEXT = 4


def load_corpus(
    name: CorpusName = "default", split: Split = "train", *, max_texts: int | None = None, seed: int = 0
) -> list[str]:
    """Texts of corpus ``name`` (``default`` or one source) for ``split``, shuffled with ``seed``.

    ``default`` trains on WordNet + docstrings and tests on fortunes; a single source is
    split 90/10 by text hash. Raises ``FileNotFoundError`` with the install command when a
    Debian source is missing.

    Example:
        >>> texts = load_corpus("default", "test", max_texts=200)
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name == "default":
        sources = [_source(s) for s in DEFAULT_SPLITS[split]]
        texts = [t for texts in sources for t in texts]
    elif name in ("docstrings", "wordnet", "fortunes"):
        texts = [t for t in _source(name) if _in_test_split(t) == (split == "test")]
    else:
        raise ValueError(f"unknown corpus {name!r}; choose from default, docstrings, wordnet, fortunes")
    texts = sorted(texts)
    random.Random(seed).shuffle(texts)
    return texts[:max_texts] if max_texts is not None else texts


def _in_test_split(text: str) -> bool:
    return hashlib.sha1(text.encode()).digest()[0] < 26  # ~10%


def _source(name: Source) -> tuple[str, ...]:
    return {"docstrings": stdlib_docstrings, "wordnet": wordnet_texts, "fortunes": fortune_texts}[name]()


def stdlib_corpus(max_texts: int = 2000, *, min_words: int = 12, seed: int = 0) -> list[str]:
    """Up to ``max_texts`` standard-library docstring paragraphs, shuffled with ``seed``."""
    ordered = list(stdlib_docstrings(min_words))
    random.Random(seed).shuffle(ordered)
    return ordered[:max_texts]


@cache
def stdlib_docstrings(min_words: int = 12) -> tuple[str, ...]:
    """Paragraphs of English prose from the docstrings of the Python standard library's
    source files, read with ``ast`` (nothing is imported, so no module runs)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    paragraphs = set()
    for source in sorted(root.glob("*.py")):
        try:
            tree = ast.parse(source.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef)))]
        for node in nodes:
            for paragraph in (ast.get_docstring(node) or "").split("\n\n"):
                text = " ".join(paragraph.split())
                if len(text.split()) >= min_words and not text.startswith((">>>", "-", "*")):
                    paragraphs.add(text)
    return tuple(sorted(paragraphs))


def _require(path: Path, package: str) -> None:
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: install Debian's {package} (`apt-get install {package}`, "
            "as scripts/setup.sh does), or use load_corpus('docstrings')"
        )


@cache
def wordnet_texts() -> tuple[str, ...]:
    """WordNet synsets as ``"Lemma: gloss. Example."`` sentences, ``SYNSETS_PER_TEXT`` per text
    (consecutive synsets in the data files, so texts stay within one part of speech)."""
    _require(WORDNET_DIR / "data.noun", "wordnet-base")
    entries = []
    for pos in ("noun", "verb", "adj", "adv"):
        for line in (WORDNET_DIR / f"data.{pos}").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or " | " not in line:  # licence header
                continue
            head, gloss = line.split(" | ", 1)
            lemma = head.split()[4].replace("_", " ")
            lemma = re.sub(r"\(\w+\)$", "", lemma)
            parts = [p.strip() for p in gloss.strip().split(";") if p.strip()]
            definition = "; ".join(p for p in parts if not p.startswith('"')).rstrip(",;: ")
            examples = [p.strip('"') for p in parts if p.startswith('"')]
            sentences = [f"{lemma[:1].upper()}{lemma[1:]}: {definition}.", *(_sentence(e) for e in examples)]
            entries.append(" ".join(sentences))
    return tuple(
        " ".join(entries[i : i + SYNSETS_PER_TEXT]) for i in range(0, len(entries), SYNSETS_PER_TEXT)
    )


def _sentence(text: str) -> str:
    text = text.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


@cache
def fortune_texts(min_words: int = 8) -> tuple[str, ...]:
    """Prose fortunes (``FORTUNE_FILES``), whitespace collapsed; entries that are mostly
    symbols (art, tables) or shorter than ``min_words`` words are dropped."""
    _require(FORTUNES_DIR / "fortunes", "fortunes")
    texts = set()
    for name in FORTUNE_FILES:
        path = FORTUNES_DIR / name
        if not path.is_file():
            continue
        for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            text = " ".join(entry.replace("%", " ").split())
            letters = sum(c.isalpha() or c.isspace() for c in text)
            if len(text.split()) >= min_words and letters >= 0.85 * len(text):
                texts.add(text)
    return tuple(sorted(texts))
