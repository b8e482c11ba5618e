"""PrefixLM (SimVLM): the image and the text prefix attend both ways, the suffix is causal, the
loss counts the suffix only, the objective on 8 devices equals 1 device, and cached decoding
equals the whole forward pass with the prompt as the prefix."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tests.test_recipes import _config
from tests.tiny_models import TINY_VIT, caption_batch
from tests.train_helpers import objective_on_one_and_eight_devices
from vlpjax.models.decoding import beam_search, greedy, left_pad, model_step
from vlpjax.models.prefix_lm import build_prefix_lm, prefix_visibility
from vlpjax.models.vlp import build_image_encoder
from vlpjax.objectives.causal_lm import prefix_lm_loss, random_prefix_lengths
from vlpjax.train.loop import train

VOCAB = 40
SPEC = {"prefix_lm": {"width": 16, "depth": 2, "num_heads": 2, "mlp_dim": 32, "max_len": 12}}


def _model():
    rngs = nnx.Rngs(0)
    return build_prefix_lm(SPEC, image_encoder=build_image_encoder(TINY_VIT, rngs=rngs), vocab_size=VOCAB, rngs=rngs)


def _batch(rows=16, length=9, seed=0):
    return caption_batch(VOCAB, rows, length, seed)


def test_the_visibility_pattern_by_hand():
    """1 image token, 3 text slots (the last one padding), a prefix of 1 text token."""
    allowed = np.asarray(prefix_visibility(1, jnp.asarray([[True, True, False]]), jnp.asarray([1])).pairs)[0, 0]
    assert allowed.astype(int).tolist() == [
        [1, 1, 0, 0],  # the image token: the image and the prefix token
        [1, 1, 0, 0],  # the prefix token: the same
        [1, 1, 1, 0],  # the suffix token: the prefix and itself
        [1, 1, 1, 0],  # padding sees what it may, nothing reads it
    ]


def test_prefix_tokens_see_each_other_and_suffix_tokens_are_causal():
    model, batch = _model(), _batch(rows=2)
    batch["text_mask"] = jnp.ones_like(batch["text_mask"])
    prefix = jnp.asarray([4, 4])
    base = np.asarray(model.text_logits(batch, prefix))

    def changed(position):
        ids = batch["text_ids"].at[:, position].set((batch["text_ids"][:, position] + 5) % VOCAB)
        return np.asarray(model.text_logits(dict(batch, text_ids=ids), prefix))

    later = changed(6)  # a suffix token: nothing before it moves
    np.testing.assert_array_equal(later[:, :6], base[:, :6])
    assert not np.allclose(later[:, 6:], base[:, 6:])
    inside = changed(3)  # a prefix token: the whole prefix reads it, earlier positions too
    assert not np.allclose(inside[:, :3], base[:, :3])
    other_image = np.asarray(model.text_logits(dict(batch, image=batch["image"][::-1]), prefix))
    assert not np.allclose(other_image, base)


def test_the_loss_counts_the_suffix_and_the_prefix_lengths_fit_each_row():
    ids = jnp.asarray([[1, 7, 8, 9, 2, 0]])
    mask = jnp.asarray([[True] * 5 + [False]])
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(1, 6, 12)), jnp.float32)
    loss, metrics = prefix_lm_loss(logits, ids, mask, jnp.asarray([3]))
    assert float(metrics["prefix_lm/tokens"]) == 2  # tokens 3 and 4 (9 and 2) are predicted
    logp = np.asarray(jax.nn.log_softmax(logits[0], axis=-1))
    np.testing.assert_allclose(float(loss), -(logp[2, 9] + logp[3, 2]) / 2, rtol=1e-6)
    real = jnp.asarray(np.arange(9)[None] < np.arange(2, 10)[:, None])  # rows of 2..9 real tokens
    draws = np.stack([np.asarray(random_prefix_lengths(jax.random.key(k), real)) for k in range(200)])
    n = np.asarray(real.sum(1))
    assert (draws >= 1).all() and (draws <= n - 1).all()
    assert all(set(draws[:, r]) == set(range(1, n[r])) for r in range(len(n)))  # every split is drawn


def test_the_objective_on_8_devices_equals_one_device():
    batch = _batch()
    m1, m8 = objective_on_one_and_eight_devices(_model(), batch, {"prefix_lm": {}})
    assert 0 < float(m1["prefix_lm/tokens"]) < float(jnp.sum(batch["text_mask"][:, 1:]))
    for name in ("loss", "prefix_lm/accuracy", "prefix_lm/tokens"):
        np.testing.assert_allclose(float(m8[name]), float(m1[name]), rtol=1e-5, err_msg=name)


def _whole_pass(model, batch, row, ids):
    """The training forward on one row's image with `ids` as its text: [CLS]-prompt as prefix."""
    one = {"image": batch["image"][row : row + 1], "text_ids": jnp.asarray([ids], jnp.int32)}
    one["text_mask"] = jnp.ones_like(one["text_ids"], bool)
    return model.text_logits(one, jnp.asarray([PROMPT_LENS[row]]))[0]


PROMPTS = [[1, 9, 3], [1]]
PROMPT_LENS = [len(p) for p in PROMPTS]


def test_cached_decoding_equals_the_whole_forward_pass_with_the_prompt_as_prefix():
    model, batch = _model(), _batch(rows=2)
    memory = model.caption_memory(batch)
    ids, mask = left_pad(PROMPTS)
    slots = model.memory_slots(memory) + ids.shape[1] + 6
    prefill, _ = model.decode(jnp.asarray(ids), jnp.asarray(mask), model.empty_cache(2, slots), memory)
    for row, prompt in enumerate(PROMPTS):
        whole = _whole_pass(model, batch, row, prompt)
        np.testing.assert_allclose(np.asarray(prefill[row, -len(prompt) :]), np.asarray(whole), rtol=1e-5, atol=1e-5)
    step = model_step(model, "decode", memory)
    out = np.asarray(greedy(step, ids, mask, model.empty_cache(2, slots), 6))
    for row, prompt in enumerate(PROMPTS):
        seq = list(prompt)
        for t in range(6):
            seq.append(int(jnp.argmax(_whole_pass(model, batch, row, seq)[-1])))
            assert seq[-1] == out[row, t], (row, t)
    together, _ = beam_search(step, ids, mask, model.empty_cache(2, slots), 4, beams=3)
    for row in range(2):
        alone_step = model_step(model, "decode", memory[row : row + 1])
        alone, _ = beam_search(alone_step, ids[row : row + 1], mask[row : row + 1], model.empty_cache(1, slots), 4, 3)
        np.testing.assert_array_equal(np.asarray(together[row]), np.asarray(alone[0]))


def test_prefixlm_recipe_trains_and_reports_caption_metrics(tiny_shapes_dir, tmp_path):
    metrics = train(_config("prefixlm_shapes", tiny_shapes_dir, "--config.train.steps=12"), str(tmp_path / "p"))
    assert {"caption/bleu4", "caption/cider_d", "caption/token_f1", "caption/object_f1"} <= set(metrics)
    assert metrics["caption/images"] == 8
