"""Prompt-pair datasets for patching and circuit discovery.

Example:
    >>> from mechinterp.data import PromptPairs
"""

from mechinterp.data.pairs import PromptPairs

__all__ = ["PromptPairs"]
