"""Reading the text fields of a dataset example (synthetic_shapes and image_text_folder rows)."""

from __future__ import annotations

import json
from typing import Any, Mapping

from vlpjax.data.tokenizer import as_text


def question_rows(example: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """(question, reference answers) pairs: one answer each in synthetic_shapes, a JSON list
    per question in image_text_folder."""
    questions = [as_text(q) for q in example["questions"]]
    if "answer_lists" in example:
        references = [json.loads(as_text(a)) for a in example["answer_lists"]]
    else:
        references = [[as_text(a)] for a in example["answers"]]
    return list(zip(questions, references, strict=False))
