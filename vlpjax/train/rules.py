"""Regex rules over parameter paths (big_vision style): freezing, lr multipliers, weight decay.

A path is the '/'-joined key path of a parameter, e.g. "img/blocks/0/attn/query/kernel".
Patterns use `re.fullmatch`; for multipliers the first matching rule wins.
"""

from __future__ import annotations

import re
from typing import Sequence

import jax
from flax import nnx

from vlpjax.errors import InvalidInput


def _part(entry) -> str:
    for attr in ("key", "idx", "name"):  # DictKey / SequenceKey / GetAttrKey, or a plain key
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def path_string(path: tuple) -> str:
    """'img/blocks/0/attn/query/kernel' from a key path; a Variable's own 'value' is dropped."""
    parts = [_part(p) for p in path]
    if parts and parts[-1] == "value":
        parts = parts[:-1]
    return "/".join(parts)


def matches(path: str, patterns: Sequence[str]) -> bool:
    return any(re.fullmatch(p, path) for p in patterns)


def check_patterns(patterns: Sequence[str], paths: Sequence[str], what: str) -> None:
    """A rule that matches no parameter is almost always a typo: say which one."""
    for pattern in patterns:
        try:
            compiled = re.compile(pattern)
        except re.error as err:
            raise InvalidInput(f"{what} rule {pattern!r} is not a valid regex: {err}") from None
        if not any(compiled.fullmatch(p) for p in paths):
            raise InvalidInput(f"{what} rule {pattern!r} matches no parameter (paths look like {paths[0]!r})")


def trainable_filter(frozen: Sequence[str]):
    """An nnx filter: Params whose path matches no `frozen` pattern."""

    def is_trainable(path, value) -> bool:
        return isinstance(value, nnx.Param) and not matches(path_string(path), frozen)

    return is_trainable


def leaf_paths(state) -> list[str]:
    return [path_string(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)]


def map_paths(fn, state):
    """A tree shaped like `state` whose leaves are fn(path string)."""
    return jax.tree_util.tree_map_with_path(lambda p, _: fn(path_string(p)), state)


def lr_multipliers(state, rules: Sequence[tuple[str, float]]):
    def mult(path: str) -> float:
        for pattern, value in rules:
            if re.fullmatch(pattern, path):
                return float(value)
        return 1.0

    return map_paths(mult, state)


def decay_mask(state, no_decay: Sequence[str]):
    return map_paths(lambda path: not matches(path, no_decay), state)
