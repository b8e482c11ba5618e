"""Serving artefacts: a model's functions as serialized StableHLO (`jax.export`), its weights beside them.

An artefact directory holds

    signature.json          what each function takes and returns, the preprocessing, the format version
    weights.safetensors     every parameter under a flat key ("img/blocks/0/attn/query/kernel")
    <function>.jaxexport    one serialized `jax.export.Exported` per function

Every function takes `(weights, *inputs)`: the weights are an argument, not constants baked into
the module, so the module stays small, the weights stay one readable safetensors file, and
fine-tuned weights of the same architecture reuse the same modules. The batch dimension is
symbolic ("b"); image size, text length and cache length are fixed at export.

Exporting needs the vlpjax models (imported inside the export functions); `load` needs only jax,
numpy, safetensors and the standard library, so a serving process never imports model code.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

from vlpjax.errors import InvalidInput

FORMAT_VERSION = 1
SIGNATURE_FILE = "signature.json"
WEIGHTS_FILE = "weights.safetensors"
BATCH = "b"  # the symbolic batch dimension, as signature.json writes it
EXPORT_SUFFIX = ".jaxexport"


# --- what crosses the boundary ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One array input: its name, its shape (ints, and BATCH for the batch) and its dtype."""

    name: str
    shape: tuple
    dtype: str

    def abstract(self, batch) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(tuple(batch if d == BATCH else d for d in self.shape), jnp.dtype(self.dtype))

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclasses.dataclass(frozen=True)
class GroupSpec:
    """A dict of arrays passed as one input (the decoder's KV cache)."""

    name: str
    fields: tuple[TensorSpec, ...]

    def abstract(self, batch) -> dict[str, jax.ShapeDtypeStruct]:
        return {f.name: f.abstract(batch) for f in self.fields}

    def to_json(self) -> dict:
        return {"name": self.name, "fields": [f.to_json() for f in self.fields]}


# --- export ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _SplitModule:
    """A module taken apart for export: its structure, and its arrays under flat string keys.

    `module(weights)` puts it back together from a dict of (traced) arrays with those keys.
    """

    graphdef: Any
    variables: dict[str, tuple[tuple, Any]]  # key -> (state path, the Variable to refill)
    rest: Any  # variables that are not numeric arrays (RNG keys): closed over, not weights
    arrays: dict[str, np.ndarray]

    def module(self, weights: Mapping[str, jax.Array]):
        from flax import nnx

        flat = [(path, variable.replace(weights[key])) for key, (path, variable) in self.variables.items()]
        return nnx.merge(self.graphdef, nnx.from_flat_state(flat), self.rest)


def _is_numeric(_path, variable) -> bool:
    return not jax.dtypes.issubdtype(variable.dtype, jax.dtypes.prng_key)


def weight_key(path: tuple) -> str:
    return "/".join(str(part) for part in path)


def split_module(module) -> _SplitModule:
    from flax import nnx

    graphdef, weights, rest = nnx.split(module, _is_numeric, ...)
    variables = {weight_key(path): (path, variable) for path, variable in nnx.to_flat_state(weights)}
    arrays = {key: np.asarray(variable[...]) for key, (_, variable) in variables.items()}
    return _SplitModule(graphdef, variables, rest, arrays)


def _abstract_weights(split: _SplitModule) -> dict[str, jax.ShapeDtypeStruct]:
    return {key: jax.ShapeDtypeStruct(a.shape, a.dtype) for key, a in split.arrays.items()}


def _dim_json(dim) -> int | str:
    return dim if isinstance(dim, int) else str(dim)  # symbolic dims print as their expression: "b"


def _outputs_json(exported, names: Sequence[str]) -> list[dict]:
    """The output specs, read from the exported module itself so signature.json cannot drift from it."""
    outputs = jax.tree.unflatten(exported.out_tree, exported.out_avals)
    if len(names) == 1:
        outputs = (outputs,)

    def spec(name, aval) -> dict:
        return {"name": name, "shape": [_dim_json(d) for d in aval.shape], "dtype": str(aval.dtype)}

    specs = []
    for name, out in zip(names, outputs, strict=True):
        if isinstance(out, Mapping):
            specs.append({"name": name, "fields": [spec(k, v) for k, v in out.items()]})
        else:
            specs.append(spec(name, out))
    return specs


@dataclasses.dataclass(frozen=True)
class _Function:
    """An exported function and what signature.json says about it."""

    exported: Any
    inputs: tuple
    output_names: tuple[str, ...]

    def to_json(self, name: str) -> dict:
        return {
            "file": name + EXPORT_SUFFIX,
            "inputs": [spec.to_json() for spec in self.inputs],
            "outputs": _outputs_json(self.exported, self.output_names),
        }


def export_function(
    fn: Callable, split: _SplitModule, inputs: Sequence, output_names: Sequence[str], platforms
) -> _Function:
    """`fn(weights, *inputs)` lowered with a symbolic batch dimension shared by every input."""
    (batch,) = jax.export.symbolic_shape(BATCH)
    args = [spec.abstract(batch) for spec in inputs]
    exported = jax.export.export(jax.jit(fn), platforms=platforms)(_abstract_weights(split), *args)
    return _Function(exported, tuple(inputs), tuple(output_names))


def write_artefacts(
    out_dir: str, functions: dict[str, _Function], split: _SplitModule, preprocessing: dict, extra: dict
) -> None:
    os.makedirs(out_dir, exist_ok=True)
    save_file(split.arrays, os.path.join(out_dir, WEIGHTS_FILE))
    for name, function in functions.items():
        with open(os.path.join(out_dir, name + EXPORT_SUFFIX), "wb") as f:
            f.write(function.exported.serialize())
    platforms = sorted({p for function in functions.values() for p in function.exported.platforms})
    signature = {
        "format_version": FORMAT_VERSION,
        "weights": WEIGHTS_FILE,
        "platforms": platforms,
        "functions": {name: function.to_json(name) for name, function in functions.items()},
        "preprocessing": preprocessing,
        **extra,
    }
    # Written last: a directory whose export stopped half way has no signature and does not load.
    with open(os.path.join(out_dir, SIGNATURE_FILE), "w") as f:
        json.dump(signature, f, indent=2)


def _checked_preprocessing(preprocessing: dict) -> dict:
    """A copy that is known to go into JSON, checked before minutes of lowering."""
    try:
        return json.loads(json.dumps(preprocessing))
    except TypeError as e:
        raise InvalidInput(f"preprocessing must be JSON-serialisable: {e}") from e


def export_dual_encoder(
    model, out_dir: str, *, image_size: int, text_len: int, preprocessing: dict, platforms: Sequence[str] | None = None
) -> None:
    """embed_image(image [b, S, S, 3] float32 in [-1, 1]) and embed_text(text_ids, text_mask [b, L]),
    both L2-normalised [b, E]. The logit scale and (sigmoid) bias go into signature.json as numbers:
    logits = logit_scale * img @ txt.T (+ logit_bias). `platforms`: jax.export's, default the local backend."""
    preprocessing = _checked_preprocessing(preprocessing)
    if tuple(model.img.input_keys) != ("image",):
        raise InvalidInput(f"only pixel image encoders export; this one takes {tuple(model.img.input_keys)}")
    split = split_module(model)
    image = TensorSpec("image", (BATCH, image_size, image_size, 3), "float32")
    text = (TensorSpec("text_ids", (BATCH, text_len), "int32"), TensorSpec("text_mask", (BATCH, text_len), "bool"))

    def embed_image(weights, image):
        return split.module(weights).embed_image({"image": image})

    def embed_text(weights, ids, mask):
        return split.module(weights).embed_text({"text_ids": ids, "text_mask": mask})

    functions = {
        "embed_image": export_function(embed_image, split, [image], ["embedding"], platforms),
        "embed_text": export_function(embed_text, split, text, ["embedding"], platforms),
    }
    bias = model.bias()
    extra = {
        "kind": "dual_encoder",
        "contrastive": model.contrastive,
        "logit_scale": float(model.scale()),
        "logit_bias": None if bias is None else float(bias),
    }
    write_artefacts(out_dir, functions, split, preprocessing, extra)


def _cache_spec(config, max_len: int) -> GroupSpec:
    """The KVCache's arrays under flat names, so a loader needs no vlpjax class to hold them."""
    kv = lambda name: TensorSpec(name, (BATCH, max_len, config.kv_heads, config.dims_per_head), config.dtype)  # noqa: E731
    layers = range(config.num_layers)
    fields = [kv(f"keys_{i}") for i in layers] + [kv(f"values_{i}") for i in layers]
    fields += [TensorSpec("valid", (BATCH, max_len), "bool"), TensorSpec("length", (), "int32")]
    return GroupSpec("cache", tuple(fields))


def _cache_arrays(cache) -> dict[str, jax.Array]:
    arrays = {f"keys_{i}": k for i, k in enumerate(cache.keys)}
    arrays.update({f"values_{i}": v for i, v in enumerate(cache.values)})
    return {**arrays, "valid": cache.valid, "length": cache.length}


def _kv_cache(arrays: Mapping[str, jax.Array], num_layers: int):
    from vlpjax.models.lm import KVCache

    keys = tuple(arrays[f"keys_{i}"] for i in range(num_layers))
    values = tuple(arrays[f"values_{i}"] for i in range(num_layers))
    return KVCache(keys, values, arrays["valid"], arrays["length"])


def export_decoder_lm(
    lm, out_dir: str, *, prompt_len: int, max_len: int, preprocessing: dict, platforms: Sequence[str] | None = None
) -> None:
    """prefill(ids, mask [b, prompt_len], left-padded) -> (logits [b, V] of the last position, cache),
    then decode_step(token [b], cache) -> (logits [b, V], cache), at most max_len - prompt_len times:
    the cache has max_len slots and a step past the last one overwrites it."""
    from vlpjax.models.lm import KVCache

    preprocessing = _checked_preprocessing(preprocessing)
    config = lm.config
    _lm_limits(config, prompt_len, max_len)
    split = split_module(lm)
    cache = _cache_spec(config, max_len)
    prompt = (TensorSpec("ids", (BATCH, prompt_len), "int32"), TensorSpec("mask", (BATCH, prompt_len), "bool"))

    def prefill(weights, ids, mask):
        empty = KVCache.empty(config, ids.shape[0], max_len)
        logits, filled = split.module(weights)(ids, mask, empty)
        return logits[:, -1], _cache_arrays(filled)

    def decode_step(weights, token, arrays):
        one = jnp.ones((token.shape[0], 1), bool)
        logits, updated = split.module(weights)(token[:, None], one, _kv_cache(arrays, config.num_layers))
        return logits[:, -1], _cache_arrays(updated)

    functions = _decoding_functions(prefill, decode_step, split, prompt, cache, platforms)
    extra = {
        "kind": "decoder_lm",
        "prompt_len": prompt_len,
        "max_len": max_len,
        "vocab_size": config.vocab_size,
        "cache": cache.to_json()["fields"],
    }
    write_artefacts(out_dir, functions, split, preprocessing, extra)


def _decoding_functions(prefill, decode_step, split, prompt_inputs, cache: GroupSpec, platforms) -> dict:
    """prefill(weights, *prompt_inputs) and decode_step(weights, token, cache), each -> (logits, cache)."""
    outputs = ["logits", "cache"]
    token = TensorSpec("token", (BATCH,), "int32")
    return {
        "prefill": export_function(prefill, split, prompt_inputs, outputs, platforms),
        "decode_step": export_function(decode_step, split, [token, cache], outputs, platforms),
    }


def _lm_limits(config, prompt_len: int, max_len: int) -> None:
    if not 0 < prompt_len < max_len:
        raise InvalidInput(f"need 0 < prompt_len < max_len, got prompt_len={prompt_len}, max_len={max_len}")
    if config.arch == "gpt2" and max_len > config.max_positions:
        raise InvalidInput(f"max_len={max_len} exceeds the model's {config.max_positions} learned positions")


def export_flamingo(
    model,
    out_dir: str,
    *,
    num_media: int,
    image_size: int,
    prompt_len: int,
    max_len: int,
    preprocessing: dict,
    platforms: Sequence[str] | None = None,
) -> None:
    """prefill(media [b, num_media, S, S, 3], ids, mask [b, prompt_len]) -> (logits [b, V + 2],
    cache), then decode_step(token [b], cache) -> (logits, cache). The media are encoded once, in
    prefill: their latents travel in the cache beside the LM's keys and values, with the count of
    `<image>` tokens seen so far (which image each new token may attend to)."""
    from vlpjax.models.flamingo import FlamingoCache

    preprocessing = _checked_preprocessing(preprocessing)
    config = model.lm.config
    _lm_limits(config, prompt_len, max_len)
    split = split_module(model)
    media = TensorSpec("media", (BATCH, num_media, image_size, image_size, 3), "float32")
    latents = jax.eval_shape(model.encode_media, jax.ShapeDtypeStruct((1, *media.shape[1:]), jnp.float32))
    extra_state = (
        TensorSpec("media_seen", (BATCH,), "int32"),
        TensorSpec("latents", (BATCH, *latents.shape[1:]), str(latents.dtype)),
    )
    cache = GroupSpec("cache", _cache_spec(config, max_len).fields + extra_state)
    prompt = (TensorSpec("ids", (BATCH, prompt_len), "int32"), TensorSpec("mask", (BATCH, prompt_len), "bool"))

    def with_latents(flamingo_cache, latents):
        return {**_cache_arrays(flamingo_cache.lm), "media_seen": flamingo_cache.media_seen, "latents": latents}

    def prefill(weights, media, ids, mask):
        flamingo = split.module(weights)
        latents = flamingo.encode_media(media)
        logits, filled = flamingo.decode(ids, mask, flamingo.empty_cache(ids.shape[0], max_len), latents)
        return logits[:, -1], with_latents(filled, latents)

    def decode_step(weights, token, arrays):
        one = jnp.ones((token.shape[0], 1), bool)
        before = FlamingoCache(_kv_cache(arrays, config.num_layers), arrays["media_seen"])
        logits, after = split.module(weights).decode(token[:, None], one, before, arrays["latents"])
        return logits[:, -1], with_latents(after, arrays["latents"])

    functions = _decoding_functions(prefill, decode_step, split, (media, *prompt), cache, platforms)
    extra = {
        "kind": "flamingo",
        "num_media": num_media,
        "prompt_len": prompt_len,
        "max_len": max_len,
        "vocab_size": model.vocab_size,
        "image_token_id": model.image_id,
        "chunk_end_token_id": model.chunk_end_id,
        "cache": cache.to_json()["fields"],
    }
    write_artefacts(out_dir, functions, split, preprocessing, extra)


# --- load --------------------------------------------------------------------------------------


def _existing(path: str) -> str:
    if not os.path.exists(path):
        raise FileNotFoundError(f"serving artefact {path!r} does not exist")
    return path


def _check_array(where: str, spec: dict, value, sizes: dict[str, int]) -> None:
    """`value` has the spec's dtype and shape; each symbolic dim takes one size across all inputs."""
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is None or dtype is None:
        raise InvalidInput(f"{where}: expected an array, got {type(value).__name__}")
    if jnp.dtype(dtype) != jnp.dtype(spec["dtype"]):
        raise InvalidInput(f"{where}: expected dtype {spec['dtype']}, got {jnp.dtype(dtype).name}")
    expected = spec["shape"]
    if len(shape) != len(expected):
        raise InvalidInput(f"{where}: expected shape {expected}, got {list(shape)}")
    for dim, size in zip(expected, shape, strict=True):
        if isinstance(dim, str):
            if size < 1:
                raise InvalidInput(f"{where}: dimension {dim!r} must be at least 1, got shape {list(shape)}")
            bound = sizes.setdefault(dim, size)
            if bound != size:
                raise InvalidInput(f"{where}: dimension {dim!r} is {size} here but {bound} in an earlier input")
        elif dim != size:
            raise InvalidInput(f"{where}: expected shape {expected}, got {list(shape)}")


def _check_input(function: str, spec: dict, value, sizes: dict[str, int]) -> None:
    where = f"{function}: input {spec['name']!r}"
    if "fields" not in spec:
        return _check_array(where, spec, value, sizes)
    names = [f["name"] for f in spec["fields"]]
    if not isinstance(value, Mapping) or set(value) != set(names):
        got = sorted(value) if isinstance(value, Mapping) else type(value).__name__
        raise InvalidInput(f"{where}: expected a dict with keys {names}, got {got}")
    for field in spec["fields"]:
        _check_array(f"{where}[{field['name']!r}]", field, value[field["name"]], sizes)


@dataclasses.dataclass(frozen=True)
class ServingFunction:
    """One exported function with its weights bound: call it with the inputs signature.json lists."""

    name: str
    signature: dict
    weights: dict[str, jax.Array]
    call: Callable  # the jitted Exported.call: one compilation per batch size

    def __call__(self, *inputs):
        specs = self.signature["inputs"]
        if len(inputs) != len(specs):
            names = [s["name"] for s in specs]
            raise InvalidInput(f"{self.name} takes {len(specs)} inputs {names}, got {len(inputs)}")
        sizes: dict[str, int] = {}
        for spec, value in zip(specs, inputs, strict=True):
            _check_input(self.name, spec, value, sizes)
        return self.call(self.weights, *inputs)


def _expected_weights(exported) -> dict:
    """The weights dict the module was lowered for: the first argument's avals."""
    args, _ = jax.tree.unflatten(exported.in_tree, exported.in_avals)
    return args[0]


def _check_weights(name: str, weights: Mapping[str, Any], exported) -> None:
    expected = _expected_weights(exported)
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise InvalidInput(f"{WEIGHTS_FILE} does not match {name}: missing {missing}, unexpected {unexpected}")
    for key, aval in expected.items():
        if tuple(weights[key].shape) != tuple(aval.shape) or weights[key].dtype != aval.dtype:
            raise InvalidInput(
                f"{WEIGHTS_FILE}: {key} is {weights[key].dtype}{list(weights[key].shape)}, "
                f"{name} expects {aval.dtype}{list(aval.shape)}"
            )


def _read_signature(directory: str) -> dict:
    with open(_existing(os.path.join(directory, SIGNATURE_FILE))) as f:
        signature = json.load(f)
    version = signature.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise InvalidInput(f"{directory}: format_version {version!r}; this reader knows up to {FORMAT_VERSION}")
    return signature


def _read_function(directory: str, name: str, entry: dict, weights: dict) -> ServingFunction:
    with open(_existing(os.path.join(directory, entry["file"])), "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    _check_weights(name, weights, exported)
    return ServingFunction(name, entry, weights, jax.jit(exported.call))


class Artefacts:
    """A loaded artefact directory: `art.<function>(*inputs)`, `art.signature`, `art.weights`,
    and for dual encoders `art.logit_scale` / `art.logit_bias` (None for softmax)."""

    def __init__(self, directory: str, signature: dict, weights: dict, functions: dict[str, ServingFunction]):
        self.directory = directory
        self.signature = signature
        self.weights = weights
        self.functions = functions

    def __getattr__(self, name: str) -> ServingFunction:
        functions = self.__dict__.get("functions", {})
        if name in functions:
            return functions[name]
        raise AttributeError(f"{name!r}: the artefacts hold the functions {sorted(functions)}")

    @property
    def logit_scale(self) -> float | None:
        return self.signature.get("logit_scale")

    @property
    def logit_bias(self) -> float | None:
        return self.signature.get("logit_bias")

    def __repr__(self) -> str:
        return f"Artefacts({self.directory!r}, functions={sorted(self.functions)})"


def load(directory: str) -> Artefacts:
    """Read an artefact directory written by export_dual_encoder / export_decoder_lm."""
    _existing(directory)
    signature = _read_signature(directory)
    arrays = load_file(_existing(os.path.join(directory, signature["weights"])))
    weights = {key: jnp.asarray(value) for key, value in arrays.items()}  # on device once, not per call
    functions = {
        name: _read_function(directory, name, entry, weights) for name, entry in signature["functions"].items()
    }
    return Artefacts(directory, signature, weights, functions)
