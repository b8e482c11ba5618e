"""Decoder LMs imported from tiny random transformers models give the same logits and the same
greedy continuations, with and without the KV cache; export loads back into transformers."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from vlpjax.interop.hf import load_decoder_lm, save_decoder_lm
from vlpjax.models.decoding import beam_search, greedy, left_pad, model_step
from vlpjax.models.lm import KVCache

VOCAB = 97


def _gpt2(**overrides):
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2, **overrides
    )
    return transformers.GPT2LMHeadModel(config)


def _llama(**overrides):
    fields = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    fields.update(bos_token_id=1, eos_token_id=2, max_position_embeddings=64, rope_theta=500.0, **overrides)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**fields))


MODELS = {
    "gpt2": _gpt2,
    "llama_gqa": _llama,
    "llama_gqa_tied": lambda: _llama(tie_word_embeddings=True),
}


def _saved(make, path, **save_kwargs):
    torch.manual_seed(0)
    model = make().eval()
    with torch.no_grad():  # random-init norms are all ones: perturb them so a swapped norm shows
        for name, p in model.named_parameters():
            if "norm" in name or "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path, safe_serialization=True, **save_kwargs)
    return model


def _ids(batch=2, length=11, seed=0):
    return np.random.default_rng(seed).integers(3, VOCAB, size=(batch, length))


def _torch_logits(model, ids, mask=None):
    with torch.no_grad():
        kwargs = {} if mask is None else {"attention_mask": torch.tensor(mask, dtype=torch.long)}
        return model(torch.tensor(ids), **kwargs).logits.numpy()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_logits_match_transformers(tmp_path, name):
    reference = _saved(MODELS[name], tmp_path)
    ids = _ids()
    ours = np.asarray(load_decoder_lm(str(tmp_path))(jnp.asarray(ids)))
    expected = _torch_logits(reference, ids)
    assert ours.shape == expected.shape == (2, 11, VOCAB)
    assert np.max(np.abs(ours - expected)) < 1e-4


def test_sharded_checkpoint_loads(tmp_path):
    reference = _saved(_llama, tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists() and not (tmp_path / "model.safetensors").exists()
    ids = _ids()
    assert (
        np.max(np.abs(np.asarray(load_decoder_lm(str(tmp_path))(jnp.asarray(ids))) - _torch_logits(reference, ids)))
        < 1e-4
    )


def test_left_padded_rows_match_their_unpadded_logits(tmp_path):
    """Padding on the left changes neither positions nor attention of the real tokens."""
    _saved(_llama, tmp_path)
    lm = load_decoder_lm(str(tmp_path))
    short, long = [5, 6, 7, 8], [9, 10, 11, 12, 13, 14]
    ids, mask = left_pad([short, long], pad_id=0)
    padded = np.asarray(lm(jnp.asarray(ids), jnp.asarray(mask)))
    alone = np.asarray(lm(jnp.asarray([short])))
    np.testing.assert_allclose(padded[0, -4:], alone[0], atol=1e-5)


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
def test_greedy_continuation_matches_transformers_with_and_without_cache(tmp_path, name):
    reference = _saved(MODELS[name], tmp_path)
    lm = load_decoder_lm(str(tmp_path))
    prompt = _ids(batch=1, length=5, seed=3)
    new = 8
    with torch.no_grad():
        expected = reference.generate(
            torch.tensor(prompt), max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0
        ).numpy()[0, 5:]

    cache = KVCache.empty(lm.config, batch=1, max_len=5 + new)
    cached = greedy(model_step(lm), prompt, np.ones_like(prompt, bool), cache, new)[0]

    graphdef, state = nnx.split(lm)
    full = jax.jit(lambda state, seq: nnx.merge(graphdef, state)(seq)[0, -1])
    uncached, seq = [], prompt
    for _ in range(new):  # the full sequence again at every step
        token = int(np.argmax(np.asarray(full(state, jnp.asarray(seq)))))
        uncached.append(token)
        seq = np.concatenate([seq, [[token]]], axis=1)
    np.testing.assert_array_equal(cached, expected)
    np.testing.assert_array_equal(uncached, expected)


def test_beam_search_finds_the_exact_best_sequence_of_a_small_space(tmp_path):
    """With as many beams as sequences, beam search is exhaustive: compare with brute force."""
    torch.manual_seed(0)
    tiny = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=6,
            hidden_size=16,
            intermediate_size=24,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    tiny.save_pretrained(tmp_path, safe_serialization=True)
    lm = load_decoder_lm(str(tmp_path))
    prompt = np.asarray([[1, 3, 4]])

    def total_logprob(seq):
        logp = np.asarray(jax.nn.log_softmax(lm(jnp.asarray([list(prompt[0]) + list(seq)]))[0], axis=-1))
        return sum(logp[2 + t, tok] for t, tok in enumerate(seq))

    best = max(itertools.product(range(6), repeat=3), key=total_logprob)
    step = model_step(lm)
    tokens, score = beam_search(step, prompt, np.ones_like(prompt, bool), KVCache.empty(lm.config, 1, 6), 3, beams=36)
    assert tuple(tokens[0]) == best
    assert abs(float(score[0]) - total_logprob(best)) < 1e-4
    one_beam, _ = beam_search(step, prompt, np.ones_like(prompt, bool), KVCache.empty(lm.config, 1, 6), 3, beams=1)
    np.testing.assert_array_equal(
        one_beam, greedy(step, prompt, np.ones_like(prompt, bool), KVCache.empty(lm.config, 1, 6), 3)
    )


def test_a_whole_generation_is_one_jitted_program(tmp_path, monkeypatch):
    """Greedy and beam search make every token inside one jitted loop: each traces whole into
    one program (a per-token host sync such as `bool(all(done))` cannot be traced), and the
    model is traced twice, for the prompt and the loop body, whatever the number of tokens."""
    _saved(_llama, tmp_path)
    lm = load_decoder_lm(str(tmp_path))
    traced = []
    forward = type(lm).__call__
    monkeypatch.setattr(type(lm), "__call__", lambda self, *args: traced.append(1) or forward(self, *args))
    prompt = _ids(batch=2, length=5, seed=1)
    mask = np.ones_like(prompt, bool)
    for new in (3, 12):
        traced.clear()
        cache = KVCache.empty(lm.config, 2, 5 + new)
        tokens = jax.jit(lambda ids, mask, cache, n=new: greedy(model_step(lm), ids, mask, cache, n, eos_id=7))
        beams = jax.jit(lambda ids, mask, cache, n=new: beam_search(model_step(lm), ids, mask, cache, n, 3, 7)[0])
        assert np.asarray(tokens(prompt, mask, cache)).shape == np.asarray(beams(prompt, mask, cache)).shape
        assert len(traced) == 4, traced


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
def test_export_loads_back_into_transformers(tmp_path, name):
    _saved(MODELS[name], tmp_path / "in")
    lm = load_decoder_lm(str(tmp_path / "in"))
    save_decoder_lm(lm, str(tmp_path / "out"))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    ids = _ids()
    assert np.max(np.abs(_torch_logits(reloaded, ids) - np.asarray(lm(jnp.asarray(ids))))) < 1e-4


def test_unsupported_checkpoints_are_named(tmp_path):
    _saved(lambda: _llama(rope_scaling={"rope_type": "linear", "factor": 2.0}), tmp_path)
    with pytest.raises(ValueError, match="rotary"):
        load_decoder_lm(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_decoder_lm(str(tmp_path / "missing"))
