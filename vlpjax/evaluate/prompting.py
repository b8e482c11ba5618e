"""A user's prompt about images continued by a Flamingo run (`vlpjax generate`).

A prompt is text in which `<image>` stands for the next given image and `<|endofchunk|>`
closes the text that belongs to it, as in the training sequences (see data/interleaved.py).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from vlpjax.data.images import normalize, resize
from vlpjax.data.interleaved import ChunkTokens
from vlpjax.data.tokenizer import TextTokenizer
from vlpjax.errors import UserError
from vlpjax.evaluate.generation import Generator


def prompt_ids(prompt: str, tokens: ChunkTokens) -> list[int]:
    """'<image>a photo of' -> [BOS, image_id, ...]: the markers become the new tokens' ids."""
    ids = list(tokens.bos)
    for i, piece in enumerate(prompt.split("<|endofchunk|>")):
        if i:
            ids.append(tokens.chunk_end_id)
        for j, text in enumerate(piece.split("<image>")):
            if j:
                ids.append(tokens.image_id)
            if text.strip():
                ids += tokens.tokenizer.encode_plain(text)
    return ids


def with_image_markers(prompt: str, images: int) -> str:
    """The prompt with one `<image>` marker per image (one is prepended if it has none)."""
    if "<image>" not in prompt:
        prompt = "<image>" + prompt
    if prompt.count("<image>") != images:
        raise UserError(f"the prompt has {prompt.count('<image>')} <image> markers but {images} images were given")
    return prompt


def continue_prompt(
    model,
    tokenizer: TextTokenizer,
    images: Sequence[np.ndarray],
    prompt: str,
    image_size: int,
    max_new_tokens: int = 32,
    beams: int = 1,
) -> str:
    """Continue `prompt`, whose `<image>` markers stand for `images` in order (one is
    prepended if the prompt has none)."""
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    prompt = with_image_markers(prompt, len(images))
    generate = Generator(model, tokenizer, beams=beams)
    ids = prompt_ids(prompt, generate.tokens)
    limit = model.lm.config.max_positions
    if len(ids) + max_new_tokens > limit:
        raise UserError(
            f"the prompt ({len(ids)} tokens) plus {max_new_tokens} new tokens exceeds the LM's {limit} positions; "
            "shorten the prompt or lower max_new_tokens"
        )
    media = np.stack([normalize(resize(image, image_size)) for image in images])[None]
    return generate([ids], media, max_new_tokens)[0]
