"""Interleaved sequences from the shapes data, and the caption parser the captioning metrics use."""

import os

import numpy as np

from tests.shapes_fixture import TINY_DATA
from vlpjax.data.builders import dataset_dir, load_builder
from vlpjax.data.interleaved import ChunkTokens, InterleavedTransform
from vlpjax.data.shapes import captions, sample_scene
from vlpjax.data.tokenizer import TextTokenizer
from vlpjax.evaluate.captions import caption_metrics, caption_objects, object_f1
from vlpjax.evaluate.prompting import prompt_ids


def _source_and_tokenizer(data_dir):
    builder = load_builder("synthetic_shapes", data_dir, **TINY_DATA)
    return builder.as_data_source()["train"], TextTokenizer(os.path.join(dataset_dir(builder), "tokenizer.json"))


def test_sequences_hold_one_image_token_per_image_and_no_unknown_words(tiny_shapes_dir):
    source, tokenizer = _source_and_tokenizer(tiny_shapes_dir)
    transform = InterleavedTransform(
        source, tokenizer, image_size=32, text_len=100, chunks=3, lm_vocab_size=tokenizer.vocab_size + 5
    )
    tokens = ChunkTokens(tokenizer, tokenizer.vocab_size + 5)
    for index in range(20):
        row = transform(source[index], np.random.default_rng(index))
        ids = row["text_ids"][row["text_mask"]]
        assert row["media"].shape == (3, 32, 32, 3)
        assert ids[0] == tokenizer.cls_id and ids[1] == tokens.image_id
        images, ends = np.flatnonzero(ids == tokens.image_id), np.flatnonzero(ids == tokens.chunk_end_id)
        assert len(images) == len(ends) == 3 and np.all(images < ends)  # <image> text <|endofchunk|>, in order
        assert tokenizer.unk_id is not None and tokenizer.unk_id not in ids.tolist()


def test_prompt_markers_become_the_new_token_ids(tiny_shapes_dir):
    _, tokenizer = _source_and_tokenizer(tiny_shapes_dir)
    tokens = ChunkTokens(tokenizer)
    ids = prompt_ids("<image>a red circle<|endofchunk|><image>", tokens)
    assert ids[:2] == [tokenizer.cls_id, tokens.image_id]
    assert ids[-2:] == [tokens.chunk_end_id, tokens.image_id]
    assert ids[2:-2] == tokenizer.encode_plain("a red circle")


def test_every_caption_style_parses_to_the_scene_objects():
    rng = np.random.default_rng(0)
    for _ in range(200):
        scene = sample_scene(rng)
        parsed = [caption_objects(c) for c in captions(scene, rng)]
        expected = {(o.size, o.colour, o.shape) for o in scene}
        assert all(p == parsed[0] for p in parsed)
        assert {k[:3] for k in parsed[0]} == expected and sum(parsed[0].values()) == len(scene)


def test_caption_scores_credit_only_what_matches():
    reference = "a small red circle at the top left and a large blue square in the middle"
    same_objects_other_order = "in the middle a large blue square; at the top left a small red circle"
    one_wrong = "a small red circle at the top left and a large green square in the middle"
    m = caption_metrics([same_objects_other_order, one_wrong, "zzz"], [[reference]] * 3, shapes=True)
    assert m["caption/exact"] == 1 / 3
    assert abs(m["caption/object_f1"] - (1 + 0.5) / 3) < 1e-9
    assert object_f1(caption_objects("a small red circle"), caption_objects(reference)) == 0.0  # no position: unparsed
