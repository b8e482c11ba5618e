"""Reading and writing Hugging Face model directories: config.json plus safetensors.

Shared by every importer (BERT encoders, decoder LMs). Tensors go through `safetensors.numpy`:
no torch, no network, no pickle.
"""

from __future__ import annotations

import json
import os

import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

from vlpjax.errors import InvalidInput, UserError

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"


def read_config(path: str) -> dict:
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"no config.json in {path!r}: expected a Hugging Face model directory")
    try:
        with open(config_path) as f:
            config = json.load(f)
    except ValueError as err:
        raise InvalidInput(f"{config_path} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise InvalidInput(f"{config_path} does not hold a JSON object")
    return config


class UnsafeShardPath(UserError, ValueError):
    """A weight index names a file outside its model directory."""


def shard_path(directory: str, shard: str, index: str) -> str:
    """The shard file `shard` inside `directory`; an index may not send the reader elsewhere."""
    root = os.path.realpath(directory)
    target = os.path.realpath(os.path.join(root, shard))
    if os.path.isabs(shard) or os.path.commonpath([root, target]) != root:
        raise UnsafeShardPath(f"{index} names shard {shard!r}, which lies outside the model directory {directory!r}")
    return target


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of a model directory: one model.safetensors or the shards its index names."""
    single = os.path.join(path, WEIGHTS_FILE)
    index = os.path.join(path, WEIGHTS_INDEX)
    if os.path.isfile(single):
        return load_file(single)
    if os.path.isfile(index):
        try:
            with open(index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise InvalidInput(f"{index} is not a safetensors index: it needs a 'weight_map' object") from None
        tensors: dict[str, np.ndarray] = {}
        for shard in shards:
            tensors.update(load_file(shard_path(path, shard, index)))
        return tensors
    raise FileNotFoundError(f"no {WEIGHTS_FILE} or {WEIGHTS_INDEX} in {path!r} (pickled .bin weights are not read)")


def strip_prefix(tensors: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """Checkpoints of task models (BertForMaskedLM, ...) nest the encoder under `prefix`."""
    if any(k.startswith(prefix) for k in tensors):
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    return tensors


def variable_at(model: nnx.Module, path: tuple) -> nnx.Variable:
    node = model
    for part in path:
        node = node[part] if isinstance(part, int) else getattr(node, part)
    return node


def assign_weights(model: nnx.Module, pairs: list[tuple[tuple, np.ndarray]], source: str) -> None:
    """Check every shape first, then write: a mismatch leaves the model untouched."""
    for path, value in pairs:
        target = variable_at(model, path)
        if tuple(target.shape) != tuple(value.shape):
            raise InvalidInput(
                f"{source}: weight for {'/'.join(map(str, path))} has shape {tuple(value.shape)}, "
                f"the model expects {tuple(target.shape)}"
            )
    for path, value in pairs:
        variable_at(model, path)[...] = np.asarray(value, dtype=np.float32)


def save_hf_directory(path: str, config: dict, tensors: dict[str, np.ndarray]) -> None:
    """config.json + model.safetensors in `path`, each written to a temporary name first."""
    os.makedirs(path, exist_ok=True)
    weights_tmp = os.path.join(path, WEIGHTS_FILE + ".tmp")
    save_file(tensors, weights_tmp, metadata={"format": "pt"})
    config_tmp = os.path.join(path, "config.json.tmp")
    with open(config_tmp, "w") as f:
        json.dump(config, f, indent=2)
    os.replace(weights_tmp, os.path.join(path, WEIGHTS_FILE))
    os.replace(config_tmp, os.path.join(path, "config.json"))


def flat_params(model: nnx.Module) -> dict[tuple, np.ndarray]:
    """Every parameter of `model` by its path, e.g. ('txt', 'layers', 0, 'attn', 'query', 'kernel')."""
    return {path: np.asarray(v[...], np.float32) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
