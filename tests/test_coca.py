"""CoCa: the decoder sees only the text up to each token (and the image), the contrastive text
embedding never sees the image, and ITC + captioning LM on 8 devices equal 1 device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from tests.test_recipes import ROOT, _config
from tests.tiny_models import TINY_VIT, caption_batch
from tests.train_helpers import objective_on_one_and_eight_devices
from vlpjax import cli
from vlpjax.data.images import normalize, resize
from vlpjax.evaluate.captioner import Captioner
from vlpjax.models.coca import build_coca
from vlpjax.models.decoding import beam_search, greedy, left_pad, model_step
from vlpjax.models.vlp import build_image_encoder, build_text_encoder
from vlpjax.objectives.registry import TextVocab
from vlpjax.train.loop import train
from vlpjax.train.metrics_log import read_metrics
from vlpjax.train.restore import trained_model

VOCAB = 40
RECIPE = f"{ROOT}/configs/coca_shapes.py:tiny"
TEXT = {"kind": "causal", "vocab_size": VOCAB, "width": 16, "depth": 1, "num_heads": 2, "mlp_dim": 32, "max_len": 10}


def _model(seed=0):
    rngs = nnx.Rngs(seed)
    image, text = build_image_encoder({**TINY_VIT, "pool": "cls"}, rngs=rngs), build_text_encoder(TEXT, rngs=rngs)
    spec = {"coca": {"decoder_depth": 2, "decoder_queries": 3, "pool_heads": 2}, "embed_dim": 8}
    return build_coca(spec, image_encoder=image, text_encoder=text, vocab_size=VOCAB, rngs=rngs)


def _batch(rows=16, length=9, seed=0):
    return caption_batch(VOCAB, rows, length, seed)


def test_a_tokens_prediction_ignores_every_later_token():
    model, batch = _model(), _batch(rows=2)
    base = model(batch)["logits"]
    for t in range(batch["text_ids"].shape[1] - 1):
        changed = dict(
            batch, text_ids=batch["text_ids"].at[:, t + 1 :].set((batch["text_ids"][:, t + 1 :] + 7) % VOCAB)
        )
        logits = model(changed)["logits"]
        np.testing.assert_array_equal(np.asarray(logits[:, : t + 1]), np.asarray(base[:, : t + 1]))
        assert not np.array_equal(np.asarray(logits[:, t + 1 :]), np.asarray(base[:, t + 1 :]))


def test_the_decoder_sees_the_image_and_the_text_embedding_does_not():
    model, batch = _model(), _batch(rows=2)
    other = dict(batch, image=batch["image"][::-1])
    a, b = model(batch), model(other)
    np.testing.assert_array_equal(np.asarray(a["txt_emb"]), np.asarray(b["txt_emb"]))
    assert not np.allclose(np.asarray(a["logits"]), np.asarray(b["logits"]))
    np.testing.assert_allclose(np.asarray(a["img_emb"]), np.asarray(b["img_emb"][::-1]), rtol=1e-5, atol=1e-6)
    # Each caption reads its own image: another row's image changes nothing in it.
    c = model(dict(batch, image=batch["image"].at[1].set(0.0)))["logits"]
    np.testing.assert_allclose(np.asarray(c[0]), np.asarray(a["logits"][0]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(c[1]), np.asarray(a["logits"][1]))


def test_itc_and_captioning_loss_on_8_devices_equal_one_device():
    batch = _batch()
    vocab = TextVocab(vocab_size=VOCAB, mask_id=None, special_ids=())
    m1, m8 = objective_on_one_and_eight_devices(_model(), batch, {"itc": {}, "lm": {"weight": 2.0}}, vocab)
    assert float(m1["lm/tokens"]) == float(jnp.sum(batch["text_mask"][:, 1:]))
    for name in ("loss", "itc/loss", "lm/loss", "lm/accuracy", "lm/tokens"):
        np.testing.assert_allclose(float(m8[name]), float(m1[name]), rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(float(m1["loss"]), float(m1["itc/loss"]) + 2.0 * float(m1["lm/loss"]), rtol=1e-6)


def test_coca_recipe_trains_reports_retrieval_and_captions_and_captions_files(tiny_shapes_dir, tmp_path, capsys):
    metrics = train(_config("coca_shapes", tiny_shapes_dir, "--config.train.steps=12"), str(tmp_path / "coca"))
    assert {"retrieval/t2i_r1", "zero_shot/top1", "caption/bleu4", "caption/cider_d", "caption/object_f1"} <= set(
        metrics
    )
    assert metrics["caption/images"] == 8
    logged = [m for m in read_metrics(str(tmp_path / "coca")) if "train/lm/loss" in m]
    assert len(logged) >= 2 and logged[-1]["train/lm/loss"] < logged[0]["train/lm/loss"]

    # `vlpjax generate` captions image files: each caption as the Captioner makes it.
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(tmp_path / "a.png")
    args = [
        "generate",
        "--config",
        RECIPE,
        "--workdir",
        str(tmp_path / "coca"),
        f"--config.data.data_dir={tiny_shapes_dir}",
    ]
    capsys.readouterr()
    assert cli.main([*args, "--image", str(tmp_path / "a.png"), "--prompt", "a", "--max_new_tokens", "5"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    model, data = trained_model(_config("coca_shapes", tiny_shapes_dir), str(tmp_path / "coca"))
    pixels = normalize(resize(np.full((40, 40, 3), 200, np.uint8), 32))[None]
    assert (
        line
        == f"{tmp_path / 'a.png'}: "
        + " ".join(["a", Captioner(model, data.tokenizer)({"image": pixels}, 5, "a")[0]]).strip()
    )
    assert cli.main([*args, "--image", str(tmp_path / "a.png"), "--max_new_tokens", "40"]) == 2
    assert "exceed the model's 32 text positions" in capsys.readouterr().err
    # By default as many tokens as the positions allow; beam search as well as greedy.
    assert (
        cli.main([*args, "--image", str(tmp_path / "a.png"), "--image", str(tmp_path / "a.png"), "--beams", "2"]) == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()[-2:]
    beam = Captioner(model, data.tokenizer, beams=2)({"image": np.concatenate([pixels, pixels])}, 31)
    assert lines == [f"{tmp_path / 'a.png'}: {caption}" for caption in beam]


@pytest.mark.parametrize(
    "text",
    [{"kind": "bidirectional"}, {"mask_padding": False}, {"pool": "first"}],
    ids=["bidirectional", "unmasked_padding", "pooled_first"],
)
def test_the_text_tower_must_be_causal_masked_and_pooled_at_its_end(text):
    rngs = nnx.Rngs(0)
    image, text = build_image_encoder(TINY_VIT, rngs=rngs), build_text_encoder({**TEXT, **text}, rngs=rngs)
    with pytest.raises(ValueError, match="must be causal|end token"):
        build_coca({}, image_encoder=image, text_encoder=text, vocab_size=VOCAB, rngs=rngs)


def _whole_pass(model, ids, context):
    """caption_logits over the whole text (no cache): the training forward."""
    ids = jnp.asarray([ids], jnp.int32)
    return model.caption_logits(model.txt.encode(ids, jnp.ones(ids.shape, bool)), context)[0]


def test_cached_decoding_equals_the_whole_forward_pass_token_by_token():
    model, batch = _model(), _batch(rows=2)
    memory, context = model.caption_memory(batch), model.caption_context(model.encode_image(batch))
    prompts = [[5, 9, 3], [7]]  # left-padded to one length inside the cache
    ids, mask = left_pad(prompts)
    prefill, _ = model.decode(jnp.asarray(ids), jnp.asarray(mask), model.empty_cache(2, 10), memory)
    for row, prompt in enumerate(prompts):
        whole = _whole_pass(model, prompt, context[row : row + 1])
        np.testing.assert_allclose(np.asarray(prefill[row, -len(prompt) :]), np.asarray(whole), rtol=1e-5, atol=1e-5)
    out = np.asarray(greedy(model_step(model, "decode", memory), ids, mask, model.empty_cache(2, 10), 6))
    for row, prompt in enumerate(prompts):
        seq = list(prompt)
        for t in range(6):
            seq.append(int(jnp.argmax(_whole_pass(model, seq, context[row : row + 1])[-1])))
            assert seq[-1] == out[row, t], (row, t)
    # Beam search reads each prompt's own image memory: the batch equals each prompt alone.
    step = model_step(model, "decode", memory)
    together, _ = beam_search(step, ids, mask, model.empty_cache(2, 10), 4, beams=3)
    for row in range(2):
        alone_step = model_step(model, "decode", jax.tree.map(lambda x, r=row: x[r : r + 1], memory))
        alone, _ = beam_search(alone_step, ids[row : row + 1], mask[row : row + 1], model.empty_cache(1, 10), 4, 3)
        np.testing.assert_array_equal(np.asarray(together[row]), np.asarray(alone[0]))
