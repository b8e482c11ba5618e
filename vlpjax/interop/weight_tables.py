"""Weight tables: every Hugging Face tensor of a model described once as (HF name, vlpjax path,
layout), read in both directions.

torch Linear stores its weight as [out, in] (ours is [in, out]: `transpose`); GPT-2's Conv1D is
already [in, out] but fuses q, k and v into one tensor, which `part` splits into column blocks.
"""

from __future__ import annotations

from typing import Iterable, Iterator, NamedTuple

import numpy as np
from flax import nnx

from vlpjax.errors import InvalidInput
from vlpjax.interop.safetensors_io import variable_at


class WeightEntry(NamedTuple):
    hf_name: str
    path: tuple
    transpose: bool = False  # torch Linear [out, in] <-> ours [in, out]
    part: tuple[int, int] | None = None  # (i, n): column block i of n (GPT-2's fused c_attn)


def norm_entries(hf_name: str, path: tuple, bias: bool) -> Iterator[WeightEntry]:
    """A LayerNorm / RMSNorm: HF `weight` is our `scale`."""
    yield WeightEntry(f"{hf_name}.weight", path + ("scale",))
    if bias:
        yield WeightEntry(f"{hf_name}.bias", path + ("bias",))


def dense_entries(hf_name: str, path: tuple, bias: bool, transpose: bool, part=None) -> Iterator[WeightEntry]:
    yield WeightEntry(f"{hf_name}.weight", path + ("kernel",), transpose, part)
    if bias:
        yield WeightEntry(f"{hf_name}.bias", path + ("bias",), False, part)


def weights_from_table(
    tensors: dict[str, np.ndarray], table: Iterable[WeightEntry], source: str
) -> list[tuple[tuple, np.ndarray]]:
    """(vlpjax path, value in our layout) for every entry; a tensor the checkpoint lacks is an error."""
    pairs = []
    for entry in table:
        if entry.hf_name not in tensors:
            raise InvalidInput(f"{source}: tensor {entry.hf_name!r} is missing from the checkpoint")
        value = tensors[entry.hf_name]
        if entry.part is not None:
            i, n = entry.part
            value = np.split(value, n, axis=-1)[i]
        pairs.append((entry.path, value.T if entry.transpose else value))
    return pairs


def tensors_from_table(model: nnx.Module, table: Iterable[WeightEntry]) -> dict[str, np.ndarray]:
    """The model's weights under their Hugging Face names and layouts (column blocks fused back)."""
    grouped: dict[str, list[tuple[int, np.ndarray]]] = {}
    for entry in table:
        value = np.asarray(variable_at(model, entry.path)[...], np.float32)
        grouped.setdefault(entry.hf_name, []).append(
            (entry.part[0] if entry.part else 0, value.T if entry.transpose else value)
        )
    return {
        name: np.ascontiguousarray(np.concatenate([v for _, v in sorted(parts, key=lambda p: p[0])], axis=-1))
        for name, parts in grouped.items()
    }
