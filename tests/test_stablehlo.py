"""Serving artefacts (vlpjax.interop.stablehlo): exported, loaded in a fresh process that imports no
model code, they give the model's own embeddings and decoder logits at any batch size."""

import os
import shutil
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from vlpjax.errors import InvalidInput
from vlpjax.interop import stablehlo
from vlpjax.models.decoding import left_pad
from vlpjax.models.lm import DecoderLM, DecoderLMConfig, KVCache
from vlpjax.models.vlp import build_dual_encoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZE, TEXT_LEN, TEXT_VOCAB = 32, 16, 50
PROMPT_LEN, MAX_LEN, LM_VOCAB, DECODE_STEPS = 5, 12, 53, 3
BATCHES = (2, 3)
LOADER_MARKER = "LOADED_WITHOUT_MODEL_CODE"
DUAL_KEYS = ("image", "text_ids", "text_mask")


def _dual_encoder(contrastive="softmax", seed=0):
    spec = {
        "image": dict(
            kind="vit", variant="x/16", width=32, depth=1, mlp_dim=64, num_heads=2, image_size=IMAGE_SIZE, pool="gap"
        ),
        "text": dict(kind="causal", vocab_size=TEXT_VOCAB, width=32, depth=1, num_heads=2, mlp_dim=64, max_len=16),
        "embed_dim": 32,
        "contrastive": contrastive,
    }
    return build_dual_encoder(spec, rngs=nnx.Rngs(seed))


def _llama():
    config = DecoderLMConfig(
        arch="llama",
        vocab_size=LM_VOCAB,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,  # grouped-query: the cache holds fewer heads than the queries
        intermediate_size=48,
        max_positions=64,
        rope_theta=500.0,
    )
    return DecoderLM(config, rngs=nnx.Rngs(0))


def _export_dual_encoder(model, directory):
    preprocessing = {"image_size": IMAGE_SIZE, "pixel_range": [-1.0, 1.0], "text_len": TEXT_LEN, "pad_id": 0}
    stablehlo.export_dual_encoder(
        model, str(directory), image_size=IMAGE_SIZE, text_len=TEXT_LEN, preprocessing=preprocessing
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("artefacts")
    dual, lm = _dual_encoder(), _llama()
    _export_dual_encoder(dual, root / "dual")
    stablehlo.export_decoder_lm(
        lm, str(root / "lm"), prompt_len=PROMPT_LEN, max_len=MAX_LEN, preprocessing={"pad_id": 0, "padding": "left"}
    )
    return {"dual": dual, "lm": lm, "dual_dir": root / "dual", "lm_dir": root / "lm"}


def _inputs(batch: int, seed: int) -> dict:
    """Images, right-padded text (row 0 mostly padding), left-padded prompts and the tokens to feed."""
    rng = np.random.default_rng(seed)
    text_lengths = np.concatenate([[2], rng.integers(1, TEXT_LEN + 1, size=batch - 1)])
    text_mask = np.arange(TEXT_LEN)[None, :] < text_lengths[:, None]
    prompt_lengths = [PROMPT_LEN, 2, 1][:batch]
    ids, mask = left_pad([list(rng.integers(3, LM_VOCAB, size=n)) for n in prompt_lengths])
    return {
        "image": rng.uniform(-1, 1, size=(batch, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32),
        "text_ids": np.where(text_mask, rng.integers(1, TEXT_VOCAB, size=text_mask.shape), 0).astype(np.int32),
        "text_mask": text_mask,
        "ids": ids,
        "mask": mask,
        "tokens": rng.integers(3, LM_VOCAB, size=(batch, DECODE_STEPS)).astype(np.int32),
    }


# Runs in a fresh interpreter that imports only the loader, so any import of model code (or flax) shows.
SERVE = textwrap.dedent(
    f"""
    import sys
    import numpy as np
    from vlpjax.interop import stablehlo

    dual_dir, lm_dir, inputs_path, out_path = sys.argv[1:]
    dual, lm = stablehlo.load(dual_dir), stablehlo.load(lm_dir)
    inputs, out = np.load(inputs_path), {{}}
    for b in {BATCHES}:
        out[f"image_{{b}}"] = np.asarray(dual.embed_image(inputs[f"image_{{b}}"]))
        out[f"text_{{b}}"] = np.asarray(dual.embed_text(inputs[f"text_ids_{{b}}"], inputs[f"text_mask_{{b}}"]))
        logits, cache = lm.prefill(inputs[f"ids_{{b}}"], inputs[f"mask_{{b}}"])
        steps = [logits]
        for t in range({DECODE_STEPS}):
            logits, cache = lm.decode_step(inputs[f"tokens_{{b}}"][:, t], cache)
            steps.append(logits)
        out[f"lm_{{b}}"] = np.stack([np.asarray(s) for s in steps], axis=1)
    loaded = sorted(m for m in sys.modules if m.startswith(("vlpjax.models", "flax")))
    assert not loaded, loaded
    np.savez(out_path, **out)
    print("{LOADER_MARKER}")
    """
)


def _serve_in_fresh_process(exported, inputs: dict, tmp_path) -> dict:
    np.savez(tmp_path / "inputs.npz", **{f"{k}_{b}": v for b, batch in inputs.items() for k, v in batch.items()})
    args = [str(exported["dual_dir"]), str(exported["lm_dir"]), str(tmp_path / "inputs.npz"), str(tmp_path / "out.npz")]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    # `-c` puts the working directory, the repo root, first on sys.path: this checkout's vlpjax is the one run.
    run = subprocess.run([sys.executable, "-c", SERVE, *args], cwd=REPO, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    assert LOADER_MARKER in run.stdout  # the import check ran and passed
    return dict(np.load(tmp_path / "out.npz"))


@nnx.jit
def _embeddings(dual, x: dict):
    return dual.embed_image({"image": x["image"]}), dual.embed_text(x)


@nnx.jit(static_argnames="max_len")
def lm_reference(lm: DecoderLM, ids, mask, tokens, max_len=MAX_LEN):
    """[B, 1 + steps, V]: the prompt's last logits, then one row per fed token, as decoding.py runs it."""
    cache = KVCache.empty(lm.config, ids.shape[0], max_len)
    logits, cache = lm(ids, mask, cache)
    steps = [logits[:, -1]]
    for t in range(tokens.shape[1]):
        logits, cache = lm(tokens[:, t : t + 1], jnp.ones((ids.shape[0], 1), bool), cache)
        steps.append(logits[:, -1])
    return jnp.stack(steps, axis=1)


def test_loaded_functions_match_the_models_at_two_batch_sizes(exported, tmp_path):
    inputs = {b: _inputs(b, seed=b) for b in BATCHES}
    served = _serve_in_fresh_process(exported, inputs, tmp_path)
    dual, lm = exported["dual"], exported["lm"]
    for b, x in inputs.items():
        image, text = _embeddings(dual, {k: x[k] for k in DUAL_KEYS})
        logits = lm_reference(lm, x["ids"], x["mask"], x["tokens"])
        assert served[f"image_{b}"].shape == image.shape == (b, 32)
        assert served[f"lm_{b}"].shape == logits.shape == (b, 1 + DECODE_STEPS, LM_VOCAB)
        np.testing.assert_allclose(served[f"image_{b}"], image, atol=1e-5, rtol=0)
        np.testing.assert_allclose(served[f"text_{b}"], text, atol=1e-5, rtol=0)
        np.testing.assert_allclose(served[f"lm_{b}"], logits, atol=1e-5, rtol=0)


def test_signature_describes_every_function(exported):
    dual = stablehlo.load(str(exported["dual_dir"])).signature
    assert dual["format_version"] == stablehlo.FORMAT_VERSION and dual["weights"] == "weights.safetensors"
    assert dual["preprocessing"]["image_size"] == IMAGE_SIZE
    embed_text = dual["functions"]["embed_text"]
    assert embed_text["file"] == "embed_text.jaxexport"
    assert embed_text["inputs"] == [
        {"name": "text_ids", "shape": ["b", TEXT_LEN], "dtype": "int32"},
        {"name": "text_mask", "shape": ["b", TEXT_LEN], "dtype": "bool"},
    ]
    assert embed_text["outputs"] == [{"name": "embedding", "shape": ["b", 32], "dtype": "float32"}]
    assert dual["logit_scale"] == pytest.approx(float(exported["dual"].scale())) and dual["logit_bias"] is None

    lm = stablehlo.load(str(exported["lm_dir"])).signature
    assert (lm["prompt_len"], lm["max_len"], lm["vocab_size"]) == (PROMPT_LEN, MAX_LEN, LM_VOCAB)
    cache_names = [f["name"] for f in lm["cache"]]
    assert cache_names == ["keys_0", "keys_1", "values_0", "values_1", "valid", "length"]
    assert lm["cache"][0]["shape"] == ["b", MAX_LEN, 2, 8]
    step = lm["functions"]["decode_step"]
    assert [i["name"] for i in step["inputs"]] == ["token", "cache"]
    assert step["outputs"][0] == {"name": "logits", "shape": ["b", LM_VOCAB], "dtype": "float32"}
    assert [f["name"] for f in step["outputs"][1]["fields"]] == sorted(cache_names)


def test_weights_come_from_the_file_not_the_module(exported, tmp_path):
    """Other weights of the same architecture in weights.safetensors give that model's embeddings."""
    directory = tmp_path / "swapped"
    shutil.copytree(exported["dual_dir"], directory)
    other = _dual_encoder(seed=1)
    save_file(stablehlo.split_module(other).arrays, str(directory / "weights.safetensors"))
    x = {k: v for k, v in _inputs(2, seed=0).items() if k in DUAL_KEYS}
    served = np.asarray(stablehlo.load(str(directory)).embed_image(x["image"]))
    np.testing.assert_allclose(served, _embeddings(other, x)[0], atol=1e-5, rtol=0)
    assert np.max(np.abs(served - _embeddings(exported["dual"], x)[0])) > 1e-2


def test_sigmoid_bias_is_in_the_signature(tmp_path):
    model = _dual_encoder("sigmoid")
    _export_dual_encoder(model, tmp_path)
    art = stablehlo.load(str(tmp_path))
    assert art.logit_scale == pytest.approx(float(model.scale()))
    assert art.logit_bias == pytest.approx(float(model.bias())) == -10.0


def test_wrong_inputs_are_named(exported):
    dual, lm = stablehlo.load(str(exported["dual_dir"])), stablehlo.load(str(exported["lm_dir"]))
    x = _inputs(2, seed=0)
    with pytest.raises(InvalidInput, match=r"embed_image: input 'image': expected shape \['b', 32, 32, 3\]"):
        dual.embed_image(x["image"][:, :16])
    with pytest.raises(InvalidInput, match="input 'text_ids': expected dtype int32, got int64"):
        dual.embed_text(x["text_ids"].astype(np.int64), x["text_mask"])
    with pytest.raises(InvalidInput, match="input 'text_mask': dimension 'b' is 1 here but 2"):
        dual.embed_text(x["text_ids"], x["text_mask"][:1])
    with pytest.raises(InvalidInput, match=r"embed_text takes 2 inputs \['text_ids', 'text_mask'\], got 1"):
        dual.embed_text(x["text_ids"])
    _, cache = lm.prefill(x["ids"], x["mask"])
    with pytest.raises(InvalidInput, match="input 'cache': expected a dict with keys"):
        lm.decode_step(x["tokens"][:, 0], {k: v for k, v in cache.items() if k != "valid"})
    with pytest.raises(InvalidInput, match=r"input 'cache'\['keys_0'\]: expected dtype float32, got bfloat16"):
        lm.decode_step(x["tokens"][:, 0], {**cache, "keys_0": cache["keys_0"].astype(jnp.bfloat16)})
    with pytest.raises(AttributeError, match="functions"):
        dual.generate  # noqa: B018


@pytest.mark.parametrize("missing", ["signature.json", "weights.safetensors", "embed_text.jaxexport"])
def test_missing_file_is_named(exported, tmp_path, missing):
    directory = tmp_path / "partial"
    shutil.copytree(exported["dual_dir"], directory)
    os.remove(directory / missing)
    with pytest.raises(FileNotFoundError, match=missing):
        stablehlo.load(str(directory))


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        stablehlo.load(str(tmp_path / "nowhere"))


@nnx.jit(static_argnames="max_len")
def _flamingo_reference(model, media, ids, mask, tokens, max_len):
    """[B, 1 + steps, V + 2] as Flamingo generates: media encoded once, then the cached steps."""
    latents = model.encode_media(media)
    logits, cache = model.decode(ids, mask, model.empty_cache(ids.shape[0], max_len), latents)
    steps = [logits[:, -1]]
    for t in range(tokens.shape[1]):
        logits, cache = model.decode(tokens[:, t : t + 1], jnp.ones((ids.shape[0], 1), bool), cache, latents)
        steps.append(logits[:, -1])
    return jnp.stack(steps, axis=1)


def test_flamingo_prefill_and_decode_steps_match_the_model(tmp_path):
    from tests.test_flamingo import IMAGE_SIZE as FLAMINGO_IMAGE
    from tests.test_flamingo import interleaved_batch, open_gates, tiny_flamingo

    model = tiny_flamingo()
    open_gates(model)  # closed gates would hide the images
    stablehlo.export_flamingo(
        model, str(tmp_path), num_media=2, image_size=FLAMINGO_IMAGE, prompt_len=11, max_len=16, preprocessing={}
    )
    served = stablehlo.load(str(tmp_path))
    assert served.signature["cache"][-1]["name"] == "latents"
    for b in BATCHES:
        x = interleaved_batch(model, seed=b, batch=b)
        ids, mask = np.asarray(x["text_ids"]), np.asarray(x["text_mask"])
        tokens = np.random.default_rng(b).integers(3, 40, size=(b, DECODE_STEPS)).astype(np.int32)
        want = _flamingo_reference(model, x["media"], ids, mask, tokens, max_len=16)
        logits, cache = served.prefill(np.asarray(x["media"]), ids, mask)
        got = [np.asarray(logits)]
        for t in range(DECODE_STEPS):
            logits, cache = served.decode_step(tokens[:, t], cache)
            got.append(np.asarray(logits))
        np.testing.assert_allclose(np.stack(got, axis=1), want, atol=1e-5, rtol=0)
