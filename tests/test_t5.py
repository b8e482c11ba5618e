"""The T5 encoder: relative position buckets by the paper's rule, and a Hugging Face
T5EncoderModel (v1.0 ReLU, v1.1 gated-GELU) imported through load_text_encoder equal to
transformers' last hidden state on padded batches; usable as a dual encoder's text tower."""

import os
import shutil

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from tests.shapes_fixture import TINY_DATA
from tests.test_recipes import _config
from tests.tiny_models import TINY_VIT
from vlpjax.data.builders import dataset_dir, load_builder
from vlpjax.data.tokenizer import TOKENIZER_FILE, TextTokenizer
from vlpjax.errors import InvalidInput
from vlpjax.interop.hf import load_text_encoder
from vlpjax.interop.hf_t5 import t5_weights
from vlpjax.models.t5 import T5Encoder, relative_position_buckets
from vlpjax.models.vlp import build_dual_encoder
from vlpjax.train.loop import _close, open_run, train
from vlpjax.train.rules import path_string

VOCAB = 50
# Offsets long enough to reach the logarithmic buckets and past max_distance.
LENGTH = 40


def _buckets_by_hand(offset: int, num_buckets: int, max_distance: int) -> int:
    half = num_buckets // 2
    base = half if offset > 0 else 0
    distance, exact = abs(offset), half // 2
    if distance < exact:
        return base + distance
    import math

    far = exact + int(math.log(distance / exact) / math.log(max_distance / exact) * (half - exact))
    return base + min(far, half - 1)


def test_relative_position_buckets_follow_the_rule():
    buckets = relative_position_buckets(LENGTH, LENGTH, 32, 20)
    for q in range(LENGTH):
        for k in range(LENGTH):
            assert buckets[q, k] == _buckets_by_hand(k - q, 32, 20), (q, k)
    assert buckets[0, 0] == 0 and buckets[0, 1] == 17 and buckets[1, 0] == 1
    assert buckets[0, LENGTH - 1] == 31 and buckets[LENGTH - 1, 0] == 15  # past max_distance: the last


def _save_tiny_t5(path, feed_forward_proj, vocab_size=VOCAB):
    config = transformers.T5Config(
        vocab_size=vocab_size,
        d_model=16,
        d_kv=8,
        d_ff=24,
        num_layers=2,
        num_heads=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=12,
        feed_forward_proj=feed_forward_proj,
        dropout_rate=0.0,
    )
    torch.manual_seed(0)
    model = transformers.T5EncoderModel(config).eval()
    with torch.no_grad():  # norms away from 1, so a missing or misplaced scale shows
        for name, param in model.named_parameters():
            if "layer_norm" in name:
                param.uniform_(0.5, 1.5)
    model.save_pretrained(path)
    return model


@pytest.mark.parametrize("feed_forward_proj", ["relu", "gated-gelu"], ids=["v1.0", "v1.1"])
def test_t5_import_equals_transformers_with_padding(feed_forward_proj, tmp_path):
    reference = _save_tiny_t5(tmp_path, feed_forward_proj)
    model = load_text_encoder(str(tmp_path))
    assert isinstance(model, T5Encoder) and model.config.feed_forward_proj == feed_forward_proj
    rng = np.random.default_rng(0)
    ids = rng.integers(1, VOCAB, size=(3, 20)).astype(np.int64)
    mask = (np.arange(20)[None] < np.array([[20], [13], [4]])).astype(np.int64)
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    ours = np.asarray(model(ids.astype(np.int32), mask.astype(bool)))
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], expected[real], rtol=1e-4, atol=1e-4)
    # Padding is never read: a padded row equals the same tokens alone.
    alone = np.asarray(model(ids[1:2, :13].astype(np.int32), np.ones((1, 13), bool)))
    np.testing.assert_allclose(ours[1, :13], alone[0], rtol=1e-5, atol=1e-5)


def test_a_config_of_another_model_type_or_projection_is_refused(tmp_path):
    _save_tiny_t5(tmp_path, "relu")
    config = (tmp_path / "config.json").read_text()
    (tmp_path / "config.json").write_text(
        config.replace('"feed_forward_proj": "relu"', '"feed_forward_proj": "gated-tanh"')
    )
    with pytest.raises(InvalidInput, match="feed_forward_proj='gated-tanh'"):
        load_text_encoder(str(tmp_path))


def test_t5_is_a_dual_encoder_text_tower_pooled_by_the_mean_of_real_tokens():
    text = {"kind": "t5", "vocab_size": VOCAB, "d_model": 16, "d_kv": 8, "d_ff": 24, "num_layers": 1, "num_heads": 2}
    model = build_dual_encoder({"image": TINY_VIT, "text": text, "embed_dim": 8}, rngs=nnx.Rngs(0))
    ids = np.arange(1, 13, dtype=np.int32).reshape(2, 6)
    mask = np.array([[1] * 6, [1] * 3 + [0] * 3], bool)
    encoded = model.txt.encode(ids, mask)
    tokens = np.asarray(encoded.tokens)
    np.testing.assert_allclose(np.asarray(encoded.pooled[1]), tokens[1, :3].mean(0), rtol=1e-5, atol=1e-6)
    emb = np.asarray(model.embed_text({"text_ids": ids, "text_mask": mask}))
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


def test_lit_t5_loads_a_hugging_face_t5_text_tower_and_trains(tiny_shapes_dir, tmp_path):
    dataset = load_builder("synthetic_shapes", tiny_shapes_dir, **TINY_DATA)
    tokenizer = os.path.join(dataset_dir(dataset), TOKENIZER_FILE)
    hf_dir = tmp_path / "t5"
    _save_tiny_t5(hf_dir, "gated-gelu", vocab_size=TextTokenizer(tokenizer).vocab_size)
    shutil.copy(tokenizer, hf_dir / TOKENIZER_FILE)
    config = _config(
        "lit_t5",
        tiny_shapes_dir,
        "--config.init.checkpoint=",
        "--config.model.text.kind=hf",
        f"--config.init.hf.text={hf_dir}",
    )
    assert config.model.text.kind == "t5" and config.model.text.d_model == 16  # the checkpoint's shape
    run = open_run(config, str(tmp_path / "run"))
    try:
        params = {path_string(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(run.state.params)}
    finally:
        _close(run)
    _, pairs = t5_weights(str(hf_dir))
    for path, value in pairs:
        np.testing.assert_array_equal(params["txt/" + "/".join(map(str, path))], value)
    metrics = train(config, str(tmp_path / "trained"))
    assert np.isfinite(metrics["retrieval/t2i_r1"])
