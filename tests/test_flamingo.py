"""Flamingo: the closed-gate model is the LM exactly; cross-attention sees only the latest
image; frozen parts do not move under training and hold no optimizer state; the LM loss
sharded over 8 devices equals one device."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tests.test_tokenizer import word_tokenizer
from tests.tiny_models import IMAGE_SIZE, TINY_VIT
from vlpjax.evaluate.generation import Generator
from vlpjax.models.decoding import beam_search, model_step
from vlpjax.models.flamingo import Flamingo, FlamingoConfig, GatedCrossAttentionBlock
from vlpjax.models.lm import DecoderLM, DecoderLMConfig, run_decoder
from vlpjax.models.vlp import build_image_encoder
from vlpjax.objectives.causal_lm import causal_lm_loss, next_token_targets
from vlpjax.objectives.registry import make_objective
from vlpjax.parallel import BATCH_AXES, make_mesh, over_batch_axes
from vlpjax.train.optimizer import make_optimizer
from vlpjax.train.rules import leaf_paths
from vlpjax.train.state import TrainState, count_params, split_model
from vlpjax.train.steps import build_mesh_step

VOCAB = 40
FROZEN = (r"img/.*", r"lm/.*")


def tiny_flamingo(arch="llama", tie=False, seed=0, cross_every=1):
    lm = DecoderLM(
        DecoderLMConfig(
            arch=arch,
            vocab_size=VOCAB,
            hidden_size=16,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            intermediate_size=24,
            max_positions=32,
            tie_embeddings=tie,
        ),
        rngs=nnx.Rngs(seed),
    )
    vision = build_image_encoder({**TINY_VIT, "pool": "gap"}, rngs=nnx.Rngs(seed + 1))
    config = FlamingoConfig(cross_every=cross_every, num_latents=3, resampler_depth=1, resampler_heads=2, cross_heads=2)
    return Flamingo(vision, lm, config, rngs=nnx.Rngs(seed + 2))


def open_gates(model, value=0.7):
    for block in model.cross:
        block.attn_gate[...] = jnp.float32(value)
        block.mlp_gate[...] = jnp.float32(-value)


def interleaved_batch(model, seed=0, batch=2):
    """Rows: t t <image> t t t <|endofchunk|> <image> t t t, with two images each."""
    rng = np.random.default_rng(seed)
    img, end = model.image_id, model.chunk_end_id
    words = rng.integers(3, VOCAB, size=(batch, 8))
    ids = np.stack([[w[0], w[1], img, w[2], w[3], w[4], end, img, w[5], w[6], w[7]] for w in words]).astype(np.int32)
    mask = np.ones_like(ids, bool)
    mask[-1, -2:] = batch < 2  # the last row of a batch ends in padding
    media = rng.normal(size=(batch, 2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    return {"text_ids": jnp.asarray(ids), "text_mask": jnp.asarray(mask), "media": jnp.asarray(media)}


@pytest.mark.parametrize("arch,tie", [("llama", False), ("gpt2", True)])
def test_closed_gates_give_the_language_models_logits_exactly(arch, tie):
    model = tiny_flamingo(arch, tie)
    batch = interleaved_batch(model)
    ids, mask = batch["text_ids"], batch["text_mask"]
    logits = np.asarray(model(batch)["logits"])
    without_blocks = np.asarray(run_decoder(model.lm, model.token_vectors(ids), mask, None, head=model.head))
    np.testing.assert_array_equal(logits, without_blocks)
    plain = jnp.asarray(np.where(np.asarray(ids) >= VOCAB, 5, np.asarray(ids)))  # no new tokens: the bare LM
    np.testing.assert_array_equal(
        np.asarray(model(dict(batch, text_ids=plain))["logits"])[..., :VOCAB], np.asarray(model.lm(plain, mask))
    )
    assert logits.shape[-1] == VOCAB + 2
    open_gates(model)
    assert np.max(np.abs(np.asarray(model(batch)["logits"]) - logits)) > 1e-3  # the check can fail


def test_a_token_attends_only_to_its_latest_image():
    block = GatedCrossAttentionBlock(16, 8, 2, 32, rngs=nnx.Rngs(0))
    block.attn_gate[...] = jnp.float32(1.0)
    block.mlp_gate[...] = jnp.float32(1.0)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(1, 7, 16)), jnp.float32)
    media_of_token = jnp.asarray([[0, 0, 1, 1, 2, 2, 2]])  # two tokens before any image
    media_of_latent = jnp.asarray([1, 1, 2, 2, 3, 3])  # three images, two latents each
    latents = rng.normal(size=(1, 6, 8)).astype(np.float32)
    base = np.asarray(block(x, jnp.asarray(latents), media_of_token, media_of_latent))
    np.testing.assert_array_equal(base[0, :2], np.asarray(x)[0, :2])  # exactly zero from the block
    for image in (1, 2, 3):
        changed = latents.copy()
        changed[0, 2 * (image - 1) : 2 * image] += rng.normal(size=(2, 8))
        out = np.asarray(block(x, jnp.asarray(changed), media_of_token, media_of_latent))
        affected = np.asarray(media_of_token[0]) == image
        np.testing.assert_array_equal(out[0, ~affected], base[0, ~affected])
        if affected.any():
            assert np.all(np.abs(out[0, affected] - base[0, affected]).max(axis=-1) > 1e-4)


def test_tokens_before_the_first_image_do_not_see_any_image():
    model = tiny_flamingo()
    open_gates(model)
    batch = interleaved_batch(model)
    base = np.asarray(model(batch)["logits"])
    other = dict(batch, media=batch["media"] + 1.0)
    changed = np.asarray(model(other)["logits"])
    np.testing.assert_array_equal(changed[:, :2], base[:, :2])
    assert np.abs(changed[:, 2:] - base[:, 2:]).max() > 1e-4


def test_cross_attention_sits_before_every_nth_layer():
    assert tiny_flamingo(cross_every=1).cross_layers == (0, 1)
    assert tiny_flamingo(cross_every=2).cross_layers == (1,)


def test_lm_loss_skips_padding_and_image_tokens_but_predicts_endofchunk():
    ids = jnp.asarray([[7, 40, 8, 41, 0]])
    mask = jnp.asarray([[True, True, True, True, False]])
    targets, weights = next_token_targets(ids, mask, ignore_ids=(40,))
    assert targets.tolist() == [[40, 8, 41, 0]]
    assert weights.tolist() == [[False, True, True, False]]


def test_lm_loss_on_eight_devices_equals_one_device():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(16, 9, VOCAB + 2)), jnp.float32)
    ids = jnp.asarray(rng.integers(0, VOCAB + 2, size=(16, 9)), jnp.int32)
    mask = jnp.asarray(np.arange(9)[None] < rng.integers(2, 10, size=(16, 1)))
    single, single_metrics = causal_lm_loss(logits, ids, mask, ignore_ids=(VOCAB,))
    sharded = over_batch_axes(causal_lm_loss, make_mesh(data=8, fsdp=1, tensor=1), 3, ignore_ids=(VOCAB,))
    loss, metrics = sharded(logits, ids, mask)
    np.testing.assert_allclose(float(loss), float(single), rtol=1e-6)
    assert float(metrics["lm/tokens"]) == float(single_metrics["lm/tokens"])
    # The paper's formula, one row at a time: mean -log p(next token) over the counted positions.
    targets, weights = (np.asarray(a) for a in next_token_targets(ids, mask, (VOCAB,)))
    logp = np.asarray(jax.nn.log_softmax(logits[:, :-1], axis=-1))
    nll = -np.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(float(single), nll[weights].mean(), rtol=1e-5)


def _optim():
    return ml_collections.ConfigDict(
        dict(lr=1e-2, warmup_steps=0, min_lr_ratio=0.0, weight_decay=0.05, b1=0.9, b2=0.999, clip_norm=1.0)
    )


def _rules():
    return ml_collections.ConfigDict(dict(frozen=FROZEN, lr_mult=(), no_decay=(r".*bias$", r".*scale$", r".*gate$")))


def test_training_moves_only_the_adapters_and_the_new_token_rows():
    model = tiny_flamingo()
    graphdef, params, frozen = split_model(model, FROZEN)
    trainable_paths = set(leaf_paths(params))
    assert all(p.startswith(("resampler/", "cross/", "new_token_")) for p in trainable_paths)
    tx = make_optimizer(_optim(), _rules(), params, total_steps=3)
    opt_state = tx.init(params)
    # Adam's moments cover the trainable leaves only: count them.
    adam = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: hasattr(s, "mu")) if hasattr(s, "mu")]
    assert len(adam) == 1
    assert len(jax.tree.leaves(adam[0].mu)) == len(jax.tree.leaves(params)) == len(trainable_paths)
    assert count_params(adam[0].mu) == count_params(adam[0].nu) == count_params(params)
    assert count_params(opt_state) < 2 * count_params(params) + 10  # moments + counters, no frozen leaf

    mesh = make_mesh(data=-1, fsdp=1, tensor=1)
    state = jax.device_put(
        TrainState(step=jnp.int32(0), params=params, frozen=frozen, opt_state=opt_state), NamedSharding(mesh, P())
    )
    step = build_mesh_step(
        graphdef, tx, make_objective({"lm": {}}), mesh, jax.tree.map(lambda x: x.sharding, state), donate=False
    )
    before_frozen = jax.tree.map(np.asarray, frozen)
    before_params = jax.tree.map(np.asarray, params)
    batch = jax.device_put(interleaved_batch(model, batch=8), NamedSharding(mesh, P(BATCH_AXES)))
    for _ in range(3):
        state, metrics = step(state, batch)
    for a, b in zip(jax.tree.leaves(before_frozen), jax.tree.leaves(state.frozen), strict=False):
        np.testing.assert_array_equal(a, np.asarray(b))  # includes every LM embedding row
    moved = [
        not np.array_equal(a, np.asarray(b))
        for a, b in zip(jax.tree.leaves(before_params), jax.tree.leaves(state.params), strict=False)
    ]
    assert all(moved)
    assert np.isfinite(float(metrics["loss"]))


def test_generation_encodes_media_once_and_beam_one_is_greedy(tmp_path, monkeypatch):
    model = tiny_flamingo()
    open_gates(model)
    batch = interleaved_batch(model, batch=2)
    ids = np.asarray(batch["text_ids"])[:, :9]  # t t <image> t t t <|endofchunk|> <image> t: no padding
    latents = model.encode_media(batch["media"])
    generate = Generator(model, word_tokenizer(tmp_path, [f"w{i}" for i in range(VOCAB)]))
    traced, encoded = [], []  # the vision encoder's traces; the generator's calls to encode a batch
    vision, encode = type(model.img).__call__, generate.encode
    monkeypatch.setattr(type(model.img), "__call__", lambda self, x: traced.append(len(x)) or vision(self, x))
    monkeypatch.setattr(generate, "encode", lambda media: encoded.append(len(media)) or encode(media))
    prompts = [list(row) for row in ids]
    out = generate.generate_ids(prompts, batch["media"], 5)
    np.testing.assert_array_equal(generate.generate_ids(prompts, batch["media"], 5), out)
    assert encoded == [2, 2]  # one call per batch of 2 prompts, not one per prompt or per token
    assert traced == [2 * 2]  # and the decoding loop never runs the encoder: only `encode` traced it
    # Without the cache: the whole sequence again for every new token, until <|endofchunk|>.
    graphdef, state = nnx.split(model)
    full = jax.jit(lambda state, seq, latents: nnx.merge(graphdef, state).logits(seq, None, latents)[0, -1])
    for row in range(2):
        seq = ids[row : row + 1]
        for t in range(5):
            nxt = int(np.argmax(np.asarray(full(state, jnp.asarray(seq), latents[row : row + 1]))))
            assert nxt == out[row, t]
            if nxt == model.chunk_end_id:
                assert np.all(out[row, t:] == nxt)
                break
            seq = np.concatenate([seq, [[nxt]]], axis=1)
    step, mask = model_step(model, "decode", latents), np.ones_like(ids, bool)
    beam, _ = beam_search(step, ids, mask, model.empty_cache(2, 14), 5, beams=1, eos_id=model.chunk_end_id)
    np.testing.assert_array_equal(beam, out)  # out is greedy's


def test_beam_search_over_a_batch_equals_each_prompt_alone():
    """The media latents are per prompt: every beam of a prompt reads its prompt's (this failed
    with a shape error for more than one prompt before the latents were repeated per beam)."""
    model = tiny_flamingo()
    open_gates(model)
    batch = interleaved_batch(model, batch=2)
    ids = np.asarray(batch["text_ids"])[:, :9]
    latents, mask = model.encode_media(batch["media"]), np.ones_like(ids, bool)
    together, scores = beam_search(model_step(model, "decode", latents), ids, mask, model.empty_cache(2, 14), 5, 3)
    for row in range(2):
        step = model_step(model, "decode", latents[row : row + 1])
        alone, score = beam_search(step, ids[row : row + 1], mask[row : row + 1], model.empty_cache(1, 14), 5, 3)
        np.testing.assert_array_equal(np.asarray(together[row]), np.asarray(alone[0]))
        np.testing.assert_allclose(float(scores[row]), float(score[0]), rtol=1e-5)
