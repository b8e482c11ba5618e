"""Weight tables: every Hugging Face tensor of a model described once as (HF name, vlpjax path,
layout), read in both directions.

torch Linear stores its weight as [out, in] (ours is [in, out]: `transpose`); GPT-2's Conv1D is
already [in, out] but fuses q, k and v into one tensor, which `part` splits into blocks of the
output dimension (torch's MultiheadAttention fuses them the same way, in [out, in]). Any other
layout change (a convolution's axis order, a reshape) is a `Layout`: a pair of functions.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np
from flax import nnx

from vlpjax.errors import InvalidInput
from vlpjax.interop.safetensors_io import variable_at


class Layout(NamedTuple):
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]


class WeightEntry(NamedTuple):
    hf_name: str
    path: tuple
    transpose: bool = False  # torch Linear [out, in] <-> ours [in, out]
    part: tuple[int, int] | None = None  # (i, n): output block i of n (GPT-2's fused c_attn)
    layout: Layout | None = None


def _output_axis(entry: WeightEntry) -> int:
    """The output dimension of the HF tensor: axis 0 of torch's [out, in], else the last."""
    return 0 if entry.transpose else -1


def norm_entries(hf_name: str, path: tuple, bias: bool) -> Iterator[WeightEntry]:
    """A LayerNorm / RMSNorm: HF `weight` is our `scale`."""
    yield WeightEntry(f"{hf_name}.weight", path + ("scale",))
    if bias:
        yield WeightEntry(f"{hf_name}.bias", path + ("bias",))


def dense_entries(hf_name: str, path: tuple, bias: bool, transpose: bool, part=None) -> Iterator[WeightEntry]:
    yield WeightEntry(f"{hf_name}.weight", path + ("kernel",), transpose, part)
    if bias:
        yield WeightEntry(f"{hf_name}.bias", path + ("bias",), False, part)


def torch_linear(hf_name: str, path: tuple, bias: bool = True) -> Iterator[WeightEntry]:
    """A torch nn.Linear: weight [out, in] (our kernel transposed), and its bias."""
    return dense_entries(hf_name, path, bias=bias, transpose=True)


def torch_layer_norm(hf_name: str, path: tuple) -> Iterator[WeightEntry]:
    """A torch nn.LayerNorm: weight (our scale) and bias."""
    return norm_entries(hf_name, path, bias=True)


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
            value = np.split(value, n, axis=_output_axis(entry))[i]
        if entry.layout is not None:
            value = entry.layout.to_ours(value)
        pairs.append((entry.path, value.T if entry.transpose else value))
    return pairs


def tensors_from_table(
    source: nnx.Module | Callable[[tuple], np.ndarray], table: Iterable[WeightEntry]
) -> dict[str, np.ndarray]:
    """The weights of a model (or the values a function gives for vlpjax paths) under their
    Hugging Face names and layouts, output blocks fused back."""
    if isinstance(source, nnx.Module):
        lookup = lambda path: variable_at(source, path)[...]  # noqa: E731
    else:
        lookup = source
    grouped: dict[str, list[tuple[int, np.ndarray]]] = {}
    axes: dict[str, int] = {}
    for entry in table:
        value = np.asarray(lookup(entry.path), np.float32)
        value = value.T if entry.transpose else value
        if entry.layout is not None:
            value = entry.layout.to_hf(value)
        grouped.setdefault(entry.hf_name, []).append((entry.part[0] if entry.part else 0, value))
        axes[entry.hf_name] = _output_axis(entry) if value.ndim > 1 else 0
    # np.array, not np.ascontiguousarray: that one turns a scalar (CLIP's logit_scale) into shape [1].
    return {name: np.array(_fused(parts, axes[name]), order="C") for name, parts in grouped.items()}


def _fused(parts: list[tuple[int, np.ndarray]], axis: int) -> np.ndarray:
    if len(parts) == 1:
        return parts[0][1]
    return np.concatenate([v for _, v in sorted(parts, key=lambda p: p[0])], axis=axis)
