"""A tiny random transformers BertModel, saved locally, gives the same hidden states in vlpjax."""

import numpy as np
import pytest
import torch
import transformers

from vlpjax.interop.hf import load_text_encoder


def _tiny_bert(tmp_path, **overrides):
    config = transformers.BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        type_vocab_size=2,
        **overrides,
    )
    torch.manual_seed(0)
    model = transformers.BertModel(config, add_pooling_layer=True).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    return model


def _inputs(batch=3, length=12, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 99, size=(batch, length))
    mask = np.ones((batch, length), dtype=np.int64)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    types = (np.arange(length)[None, :] >= length // 2).astype(np.int64).repeat(batch, 0)
    return ids, mask, types


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new", "relu"])
def test_bert_import_matches_transformers(tmp_path, hidden_act):
    reference = _tiny_bert(tmp_path, hidden_act=hidden_act)
    ids, mask, types = _inputs()
    with torch.no_grad():
        want = reference(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types)
        ).last_hidden_state.numpy()
    model = load_text_encoder(str(tmp_path))
    got = np.asarray(model(ids, mask, token_type_ids=types))
    real = mask.astype(bool)  # HF still computes padded positions; compare the real ones
    diff = np.max(np.abs(got[real] - want[real]))
    assert diff <= 1e-4, diff
    # Without token types both default to zeros.
    with torch.no_grad():
        want0 = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    assert np.max(np.abs(np.asarray(model(ids, mask))[real] - want0[real])) <= 1e-4


def test_bert_import_rejects_mismatched_shapes(tmp_path):
    _tiny_bert(tmp_path)
    config_path = tmp_path / "config.json"
    text = config_path.read_text().replace('"intermediate_size": 37', '"intermediate_size": 38')
    config_path.write_text(text)
    with pytest.raises(ValueError, match="fc1/kernel.*shape"):
        load_text_encoder(str(tmp_path))


def test_bert_import_names_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_text_encoder(str(tmp_path / "nowhere"))
