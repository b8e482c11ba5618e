"""BLIP's image-grounded decoder in the fusion family: it owns only its causal self-attention
and LM head, everything else is the encoder's; both losses train the shared layers; its masks
are causal; cached decoding equals the whole forward pass; an albef checkpoint loads into it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.test_recipes import ROOT, _config
from tests.tiny_models import TINY_VIT, caption_batch
from tests.train_helpers import objective_on_one_and_eight_devices
from vlpjax.config import ConfigError, load_recipe, validate
from vlpjax.models.decoding import greedy, left_pad, model_step
from vlpjax.models.fusion_vlp import build_fusion_vlp
from vlpjax.objectives.registry import StepContext, TextVocab, make_objective
from vlpjax.parallel import AxisShards
from vlpjax.train import checkpoints
from vlpjax.train.loop import train
from vlpjax.train.rules import path_string

VOCAB = 40
TEXT_VOCAB = TextVocab(vocab_size=VOCAB, mask_id=4, special_ids=(0, 2, 3, 4))
LENGTH = 10
LAYERS = 3  # layer 0 text-only, layers 1 and 2 with cross-attention


def _spec(decoder=True, vocab=VOCAB, length=LENGTH, **more):
    return {
        "image": {**TINY_VIT, "pool": "gap"},
        "text": dict(
            kind="bert",
            vocab_size=vocab,
            hidden_size=16,
            num_hidden_layers=LAYERS,
            cross_attention_from=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=length,
        ),
        "fusion": {"layout": "albef"},
        "embed_dim": 8,
        "decoder": decoder,
        **more,
    }


def _model(decoder=True, seed=0, vocab=VOCAB, length=LENGTH, **more):
    return build_fusion_vlp(_spec(decoder, vocab, length, **more), rngs=nnx.Rngs(seed))


def _batch(rows=8):
    return {**caption_batch(VOCAB, rows, LENGTH), "image_id": jnp.arange(rows, dtype=jnp.int32)}


def _paths(tree) -> set[str]:
    return {path_string(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)}


def test_the_decoder_owns_only_its_causal_self_attention_and_lm_head():
    with_decoder, without = _model(), _model(decoder=False)
    encoder = _paths(nnx.state(without, nnx.Param))
    assert encoder <= _paths(nnx.state(with_decoder, nnx.Param))  # the encoder's parameters are all kept
    own = _paths(nnx.state(with_decoder, nnx.Param)) - encoder

    def under(prefix):
        return {p[len(prefix) :] for p in encoder if p.startswith(prefix)}

    expected = {f"decoder/lm_head/{rest}" for rest in under("mlm_head/")}
    for i in range(LAYERS):
        expected |= {f"decoder/self_attention/{i}/attn/{rest}" for rest in under(f"txt/layers/{i}/attn/")}
        expected |= {f"decoder/self_attention/{i}/ln/{rest}" for rest in under(f"txt/layers/{i}/ln_attn/")}
    assert own == expected


def _grads(model, batch, spec):
    graphdef, params = nnx.split(model, nnx.Param)
    objective = make_objective(spec, TEXT_VOCAB)

    def loss(params):
        m = nnx.merge(graphdef, params)
        return objective(m(batch), batch, StepContext(model=m, key=jax.random.key(1), shards=AxisShards(None)))[0]

    grads = jax.grad(loss)(params)
    return {path_string(p): np.asarray(g) for p, g in jax.tree_util.tree_leaves_with_path(grads)}


def test_shared_leaves_get_gradient_from_the_encoder_and_the_decoder_loss():
    model, batch = _model(), _batch()
    encoder = _grads(model, batch, {"itm": {}, "mlm": {}})
    decoder = _grads(model, batch, {"lm": {}})
    both = _grads(model, batch, {"itm": {}, "mlm": {}, "lm": {}})

    def nonzero(grads, path):
        return bool(np.any(grads[path] != 0))

    shared = [
        "txt/word_embeddings/embedding",
        "txt/position_embeddings/embedding",
        "txt/layers/0/mlp/fc1/kernel",
        "txt/layers/2/cross/query/kernel",
        "txt/layers/2/ln_cross/scale",
        "txt/layers/2/ln_mlp/bias",
    ]
    for path in shared:
        assert nonzero(encoder, path) and nonzero(decoder, path), path
        np.testing.assert_allclose(both[path], encoder[path] + decoder[path], rtol=1e-4, atol=1e-7, err_msg=path)
    # The encoder's self-attention is the encoder's alone, the decoder's its own.
    for i in range(LAYERS):
        assert not nonzero(decoder, f"txt/layers/{i}/attn/query/kernel")
        assert not nonzero(decoder, f"txt/layers/{i}/ln_attn/scale")
        assert nonzero(decoder, f"decoder/self_attention/{i}/attn/query/kernel")
        assert not nonzero(encoder, f"decoder/self_attention/{i}/attn/query/kernel")
    assert not nonzero(encoder, "decoder/lm_head/decoder/kernel") and nonzero(decoder, "decoder/lm_head/decoder/kernel")
    assert not nonzero(decoder, "mlm_head/decoder/kernel")


def test_a_tokens_prediction_ignores_every_later_token_and_reads_its_own_image():
    model, batch = _model(), _batch(rows=2)
    base = np.asarray(model.text_logits(batch))
    for t in range(LENGTH - 1):
        ids = batch["text_ids"].at[:, t + 1 :].set((batch["text_ids"][:, t + 1 :] + 7) % VOCAB)
        logits = np.asarray(model.text_logits(dict(batch, text_ids=ids)))
        np.testing.assert_array_equal(logits[:, : t + 1], base[:, : t + 1])
        assert not np.array_equal(logits[:, t + 1 :], base[:, t + 1 :])
    other = np.asarray(model.text_logits(dict(batch, image=batch["image"].at[1].set(0.0))))
    np.testing.assert_allclose(other[0], base[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(other[1], base[1])


def test_itc_itm_mlm_and_lm_on_8_devices_equal_one_device():
    batch = _batch(16)
    spec = {"itc": {}, "itm": {}, "mlm": {}, "lm": {"weight": 0.5}}
    m1, m8 = objective_on_one_and_eight_devices(_model(), batch, spec, TEXT_VOCAB)
    assert float(m1["lm/tokens"]) == float(jnp.sum(batch["text_mask"][:, 1:]))
    for name in ("loss", "itc/loss", "itm/loss", "mlm/loss", "lm/loss", "lm/accuracy"):
        np.testing.assert_allclose(float(m8[name]), float(m1[name]), rtol=1e-5, err_msg=name)


def _whole_pass(model, ids, image_row):
    ids = jnp.asarray([ids], jnp.int32)
    return model.text_logits({"image": image_row, "text_ids": ids, "text_mask": jnp.ones(ids.shape, bool)})[0]


def test_cached_decoding_equals_the_whole_forward_pass_token_by_token():
    # fusion_posemb: the image memory must carry the positions the training pass adds.
    model, batch = _model(fusion_posemb=True), _batch(rows=2)
    memory = model.caption_memory(batch)
    prompts = [[2, 9, 13], [2]]
    ids, mask = left_pad(prompts)
    prefill, _ = model.decode(jnp.asarray(ids), jnp.asarray(mask), model.empty_cache(2, LENGTH), memory)
    for row, prompt in enumerate(prompts):
        whole = _whole_pass(model, prompt, batch["image"][row : row + 1])
        np.testing.assert_allclose(np.asarray(prefill[row, -len(prompt) :]), np.asarray(whole), rtol=1e-5, atol=1e-5)
    out = np.asarray(greedy(model_step(model, "decode", memory), ids, mask, model.empty_cache(2, LENGTH), 6))
    for row, prompt in enumerate(prompts):
        seq = list(prompt)
        for t in range(6):
            seq.append(int(jnp.argmax(_whole_pass(model, seq, batch["image"][row : row + 1])[-1])))
            assert seq[-1] == out[row, t], (row, t)


def test_generating_needs_the_decoder():
    with pytest.raises(ValueError, match="model.decoder=True"):
        _model(decoder=False).caption_memory(_batch(rows=2))
    albef = load_recipe(f"{ROOT}/configs/albef_shapes.py:tiny")
    with albef.unlocked():
        albef.objectives.lm = {}
    with pytest.raises(ConfigError, match="objectives.lm generates text: a fusion model needs model.decoder=True"):
        validate(albef)
    blip = load_recipe(f"{ROOT}/configs/blip_shapes.py:tiny")
    with blip.unlocked():
        del blip.objectives["lm"]
        blip.model.decoder = False
    with pytest.raises(ConfigError, match=r"evals.caption \(captioning\) generates text"):
        validate(blip)
    with pytest.raises(ValueError, match="needs the ALBEF layout"):
        build_fusion_vlp(
            {**_spec(), "fusion": {"layout": "merged", "width": 16, "depth": 1, "num_heads": 2}}, rngs=nnx.Rngs(0)
        )


def test_an_albef_run_loads_into_blip_and_blip_trains_lm_beside_itc_itm_mlm(tiny_shapes_dir, tmp_path):
    train(_config("albef_shapes", tiny_shapes_dir, "--config.train.steps=2"), str(tmp_path / "albef"))
    config = _config(
        "blip_shapes", tiny_shapes_dir, "--config.train.steps=4", f"--config.init.checkpoint={tmp_path / 'albef'}"
    )
    albef, _ = checkpoints.restore_params(str(tmp_path / "albef"))
    loaded = {path_string(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(albef["params"])}

    from vlpjax.train.loop import _close, open_run

    run = open_run(config, str(tmp_path / "blip_start"))
    try:
        start = {path_string(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(run.state.params)}
    finally:
        _close(run)
    assert set(start) - set(loaded) and all(p.startswith("decoder/") for p in set(start) - set(loaded))
    for path, value in loaded.items():
        np.testing.assert_array_equal(start[path], value, err_msg=path)
    metrics = train(config, str(tmp_path / "blip"))
    assert {"caption/bleu4", "caption/object_f1", "retrieval/itm_t2i_r1", "zero_shot/top1"} <= set(metrics)
