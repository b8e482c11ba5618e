"""Generated VQA's rows: "[CLS] question [SEP] answer [SEP]", the question a prompt (PrefixLM:
the bidirectional prefix) and the answer what the model learns to write.

`prefix_len` is the prompt's length, so the `lm` / `prefix_lm` losses score the answer's tokens
and its closing [SEP] only; the rank evaluator scores candidate answers on the same rows.
"""

from __future__ import annotations

import numpy as np

from vlpjax.data.tokenizer import TextTokenizer
from vlpjax.errors import InvalidInput


def question_prompt(tokenizer: TextTokenizer, question: str, length: int) -> list[int]:
    """[CLS] question [SEP], the question cut to fit `length` tokens (keeping [SEP])."""
    _check_template(tokenizer)
    ids = tokenizer.encode(question)
    return ids if len(ids) <= length else ids[: length - 1] + ids[-1:]


def question_answer_ids(
    tokenizer: TextTokenizer, question: str, answer: str, length: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """(ids [length], mask [length], prefix_len) of one row, right-padded. The answer is kept
    whole; the question gives way (it keeps [CLS] and [SEP]) when the two do not fit."""
    answer_ids = [*tokenizer.encode_plain(answer), tokenizer.sep_id]
    room = length - len(answer_ids)
    if room < 2:
        raise InvalidInput(
            f"the answer {answer!r} takes {len(answer_ids)} tokens: data.text_len={length} leaves no room for "
            "its question"
        )
    prompt = question_prompt(tokenizer, question, room)
    tokens = prompt + answer_ids
    ids = np.full(length, tokenizer.fill_id, np.int32)
    ids[: len(tokens)] = tokens
    mask = np.arange(length) < len(tokens)
    return ids, mask, len(prompt)


def _check_template(tokenizer: TextTokenizer) -> None:
    if tokenizer.cls_id is None or tokenizer.sep_id is None:
        raise InvalidInput("generated VQA needs a tokenizer with [CLS] and [SEP] (or <s> and </s>)")
