"""Tokenizers: a WordPiece model trained on the shapes captions, or any local HF tokenizer.

Both are wrapped as `TextTokenizer`, which turns strings into right-padded id and mask arrays
of a fixed length with [CLS] ... [SEP] around the text (so the causal tower pools [SEP]).
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

import numpy as np

from vlpjax.errors import InvalidInput

TOKENIZER_FILE = "tokenizer.json"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def as_text(value) -> str:
    """TFDS data sources return Text features as bytes."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def train_wordpiece(*texts: Iterable[str], path: str, vocab_size: int = 256) -> None:
    """Train a lower-cased WordPiece vocabulary on `texts` and save it as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS))

    def all_texts():
        for source in texts:
            yield from source

    tokenizer.train_from_iterator(all_texts(), trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    tokenizer.decoder = decoders.WordPiece()
    tmp = path + ".tmp"
    tokenizer.save(tmp)
    os.replace(tmp, path)


def _hf_fast_tokenizer(path: str):
    """The Rust tokenizer behind a local Hugging Face tokenizer directory (vocab.txt etc.)."""
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(path, local_files_only=True, use_fast=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the path named
        raise InvalidInput(f"cannot load a tokenizer from {path!r}: {err}") from err
    if not getattr(hf, "is_fast", False):
        raise InvalidInput(f"the tokenizer in {path!r} has no fast (Rust) version")
    return hf.backend_tokenizer


def _configured_pad(path: str) -> tuple[str, ...]:
    """The pad token a tokenizer directory's tokenizer_config.json names, if any."""
    file = os.path.join(path, "tokenizer_config.json")
    if not os.path.isfile(file):
        return ()
    try:
        with open(file) as f:
            pad = json.load(f).get("pad_token")
    except (ValueError, AttributeError):
        raise InvalidInput(f"{file} is not a JSON object") from None
    if isinstance(pad, dict):
        pad = pad.get("content")
    return (pad,) if isinstance(pad, str) else ()


class TextTokenizer:
    """Strings -> (ids [N, L] int32, mask [N, L] bool), truncated and right-padded; the mask
    is True on the tokens the tokenizer produced."""

    def __init__(self, path: str):
        file = os.path.join(path, TOKENIZER_FILE) if os.path.isdir(path) else path
        if os.path.isfile(file):
            from tokenizers import Tokenizer

            self._fast = Tokenizer.from_file(file)
        elif os.path.isdir(path):
            self._fast = _hf_fast_tokenizer(path)
        else:
            raise FileNotFoundError(
                f"no tokenizer at {path!r}: expected a tokenizer.json or a Hugging Face tokenizer directory"
            )
        # None: the tokenizer has no pad token. A directory's tokenizer_config.json names it where
        # the vocabulary's own "<pad>" is not what the model was trained with (SigLIP pads with "</s>").
        self.pad_id = self._id(*_configured_pad(path), "[PAD]", "<pad>", default=None)
        # The id written into padded slots. Any id would do: masks, never ids, say which slots
        # are real (GPT-2 has no pad token and its id 0 is "!").
        self.fill_id = 0 if self.pad_id is None else self.pad_id
        self.mask_id = self._id("[MASK]", "<mask>", default=None)
        self.cls_id = self._id("[CLS]", "<s>", default=None)
        self.sep_id = self._id("[SEP]", "</s>", default=None)
        self.unk_id = self._id("[UNK]", "<unk>", default=None)
        self.vocab_size = self._fast.get_vocab_size()

    def _id(self, *names: str, default):
        for name in names:
            token_id = self._fast.token_to_id(name)
            if token_id is not None:
                return token_id
        return default

    @property
    def special_ids(self) -> tuple[int, ...]:
        return tuple(i for i in (self.pad_id, self.cls_id, self.sep_id, self.mask_id) if i is not None)

    def __call__(self, texts: Sequence[str], length: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.full((len(texts), length), self.fill_id, np.int32)
        mask = np.zeros((len(texts), length), bool)
        for row, encoding in enumerate(self._fast.encode_batch(list(texts))):
            tokens = encoding.ids
            if len(tokens) > length:  # keep the closing [SEP]: it is what the causal tower pools
                tokens = tokens[: length - 1] + tokens[-1:]
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = True
        return ids, mask

    def save(self, path: str) -> None:
        """The tokenizer as one tokenizer.json (what an exported Hugging Face directory holds)."""
        self._fast.save(path)

    def token(self, token_id: int) -> str:
        return self._fast.id_to_token(token_id)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` in the tokenizer's template ([CLS] ... [SEP]), untruncated."""
        return self._fast.encode(text).ids

    def encode_plain(self, text: str) -> list[int]:
        """Token ids of `text` without the [CLS] ... [SEP] template (a chunk inside a sequence)."""
        return self._fast.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of real token ids (select them with the mask first): every id is decoded, only
        the tokenizer's own special tokens ([CLS], [PAD], ...) are left out."""
        return self._fast.decode([int(i) for i in ids])
