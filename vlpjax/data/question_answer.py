"""Generated VQA's rows: "[CLS] question [SEP] answer [SEP]", the question a prompt (PrefixLM:
the bidirectional prefix) and the answer what the model learns to write.

`prefix_len` is the prompt's length, so the `lm` / `prefix_lm` losses score the answer's tokens
and its closing [SEP] only; the rank evaluator scores candidate answers on the same rows.
"""

from __future__ import annotations

import numpy as np

from vlpjax.data.tokenizer import TextTokenizer
from vlpjax.errors import InvalidInput

# The fewest tokens a question keeps: [CLS], a word, [SEP].
MIN_PROMPT = 3


def question_prompt(tokenizer: TextTokenizer, question: str, length: int) -> list[int]:
    """[CLS] question [SEP], the question cut to fit `length` tokens (keeping [SEP])."""
    check_template(tokenizer)
    ids = tokenizer.encode(question)
    return ids if len(ids) <= length else ids[: length - 1] + ids[-1:]


def question_answer_ids(
    tokenizer: TextTokenizer, question: str, answer: str, length: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """(ids [length], mask [length], prefix_len) of one row, right-padded. When the two do not
    fit, the question gives way first (keeping [CLS], its first word and [SEP]), then the
    answer is cut (keeping its [SEP])."""
    if length < MIN_PROMPT + 2:
        raise InvalidInput(f"data.text_len={length} is too short for a question and an answer")
    answer_ids = [*tokenizer.encode_plain(answer)[: length - MIN_PROMPT - 1], tokenizer.sep_id]
    prompt = question_prompt(tokenizer, question, length - len(answer_ids))
    tokens = prompt + answer_ids
    ids = np.full(length, tokenizer.fill_id, np.int32)
    ids[: len(tokens)] = tokens
    mask = np.arange(length) < len(tokens)
    return ids, mask, len(prompt)


def check_template(tokenizer: TextTokenizer) -> None:
    if tokenizer.cls_id is None or tokenizer.sep_id is None:
        raise InvalidInput("generated VQA needs a tokenizer with [CLS] and [SEP] (or <s> and </s>)")
