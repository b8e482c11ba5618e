"""A token whose id is 0 is a real token like any other: padding is a fact about positions, not ids.

The tokenizer here has no pad token and puts `!` at id 0 (as GPT-2 does), so any code that
decides "padding" by comparing ids with a pad id of 0 loses every `!`."""

import numpy as np

from vlpjax.data.images import encode_png
from vlpjax.data.interleaved import ChunkTokens, InterleavedTransform, TextTransform
from vlpjax.data.tokenizer import TextTokenizer
from vlpjax.evaluate.generation import caption_eval, vqa_eval
from vlpjax.evaluate.prompting import prompt_ids

WORDS = ["!", "[UNK]", "a", "red", "circle", "how", "many", "question", "answer", "two", "wow"]


def word_tokenizer(path, words=WORDS) -> TextTokenizer:
    """A whitespace word-level tokenizer with `words` at ids 0.. and no pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    file = str(path / "tokenizer.json")
    tokenizer.save(file)
    return TextTokenizer(file)


def test_the_tokenizer_masks_positions_not_ids(tmp_path):
    tokenizer = word_tokenizer(tmp_path)
    assert tokenizer.encode_plain("wow !") == [10, 0]
    ids, mask = tokenizer(["wow !", "! ! a"], 5)
    assert ids[:, :3].tolist() == [[10, 0, ids[0, 2]], [0, 0, 2]]
    assert mask.tolist() == [[True, True, False, False, False], [True, True, True, False, False]]
    assert tokenizer.decode(ids[0][mask[0]]) == "wow !"
    assert tokenizer.decode([0, 0, 2]) == "! ! a"
    assert 0 not in tokenizer.special_ids  # `!` may be masked and replaced like any word
    row = TextTransform(tokenizer, 6)({"captions": [b"a red circle !"]}, np.random.default_rng(0))
    assert row["text_ids"][row["text_mask"]].tolist() == [2, 3, 4, 0]


def _example(caption: str, question: str = "how many", answer: str = "two !"):
    image = np.zeros((8, 8, 3), np.uint8)
    return {"image": encode_png(image), "captions": [caption.encode()], "questions": [question], "answers": [answer]}


class _RecordingGenerator:
    """Stands in for evaluate.generation.Generator: keeps the prompts it is given."""

    def __init__(self, tokenizer):
        self.tokenizer, self.tokens = tokenizer, ChunkTokens(tokenizer)
        self.prompts = []

    def __call__(self, prompts, media, max_new_tokens):
        self.prompts += [list(p) for p in prompts]
        return ["two"] * len(prompts)


def test_flamingo_sequences_and_prompts_keep_a_token_whose_id_is_zero(tmp_path):
    tokenizer = word_tokenizer(tmp_path)
    tokens = ChunkTokens(tokenizer)
    image, end = tokens.image_id, tokens.chunk_end_id

    ids, mask = tokens.sequence([tokens.chunk("wow !"), tokens.chunk("! a")], 10)
    assert ids[mask].tolist() == [image, 10, 0, end, image, 0, 2, end]
    row = InterleavedTransform([_example("wow !")], tokenizer, 8, 10, chunks=1)(
        _example("wow !"), np.random.default_rng(1)
    )
    assert 0 in row["text_ids"][row["text_mask"]].tolist()

    assert prompt_ids("<image>wow !<|endofchunk|><image>!", tokens) == [image, 10, 0, end, image, 0]

    shots, tests = [_example("a red circle !")], [_example("wow")]
    generate = _RecordingGenerator(tokenizer)
    caption_eval(generate, tests, shots, image_size=8, batch_size=1, max_new_tokens=3, shapes=False)
    assert generate.prompts == [[image, 2, 3, 4, 0, end, image]]
    generate = _RecordingGenerator(tokenizer)
    vqa_eval(generate, tests, shots, image_size=8, batch_size=1, max_new_tokens=3)
    question = [7, 5, 6, 8]  # "question how many answer"
    assert generate.prompts == [[image, *question, 9, 0, end, image, *question]]


def test_a_tokenizer_directory_names_its_pad_token(tmp_path):
    """SigLIP's vocabulary has a "<pad>", but its tokenizer_config.json pads with "</s>"."""
    import json

    word_tokenizer(tmp_path, WORDS + ["<pad>", "</s>"])
    assert TextTokenizer(str(tmp_path)).fill_id == 11  # no tokenizer_config.json: the vocabulary's <pad>
    for pad in ("</s>", {"content": "</s>", "special": True}):
        (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": pad}))
        tokenizer = TextTokenizer(str(tmp_path))
        assert tokenizer.fill_id == tokenizer.pad_id == 12
        ids, mask = tokenizer(["a red"], 4)
        assert ids[0].tolist() == [2, 3, 12, 12] and mask[0].tolist() == [True, True, False, False]
