"""What a user outside vlpjax must do to an image or a text before the exported model sees it.

vlpjax feeds its towers RGB pixels scaled to [-1, 1] (`vlpjax.data.images`: x / 127.5 - 1),
that is (x / 255 - 0.5) / 0.5, at the recipe's square image size; texts are tokenized with the
run's tokenizer.json, truncated to `data.text_len` (keeping the closing [SEP]) and right-padded.
"""

from __future__ import annotations

import json
import os

from vlpjax.data.tokenizer import TOKENIZER_FILE

PREPROCESSOR_FILE = "preprocessor_config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
PIXEL_MEAN = (0.5, 0.5, 0.5)  # of pixels / 255
PIXEL_STD = (0.5, 0.5, 0.5)


def image_processor_config(image_size: int, hf_config: dict, mean=PIXEL_MEAN, std=PIXEL_STD) -> dict:
    """preprocessor_config.json for transformers' CLIP / SigLIP image processor: resize to the
    square size, rescale by 1/255, normalise with the tower's mean and std (vlpjax's 0.5, or
    those of the checkpoint it was imported from: its ViT converts [-1, 1] pixels to them)."""
    processor = "CLIPImageProcessor" if hf_config["model_type"] == "clip" else "SiglipImageProcessor"
    return dict(
        image_processor_type=processor,
        do_resize=True,
        size={"height": image_size, "width": image_size},
        do_center_crop=False,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(mean),
        image_std=list(std),
        do_convert_rgb=True,
    )


def serving_preprocessing(config, tokenizer, padding: str = "right") -> dict:
    """The preprocessing constants a serving signature records (decoder prompts: left-padded)."""
    return dict(
        image_size=int(config.data.image_size),
        image_layout="NHWC, RGB",
        pixel_transform="float(pixels) / 127.5 - 1 (= (pixels / 255 - mean) / std)",
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
        text_len=int(config.data.text_len),
        tokenizer="tokenizer.json",
        text_padding=f"{padding}; the mask is True on real tokens",
        pad_id=int(tokenizer.fill_id),
        bos_id=tokenizer.cls_id,
        eos_id=tokenizer.sep_id,
    )


def tokenizer_config(tokenizer, text_len: int) -> dict:
    """tokenizer_config.json: without it transformers' AutoTokenizer would pick the model type's
    own tokenizer class (CLIPTokenizer for a CLIPModel) and produce other ids than the run's."""
    ids = dict(
        pad_token=tokenizer.pad_id,
        unk_token=tokenizer.unk_id,
        cls_token=tokenizer.cls_id,
        sep_token=tokenizer.sep_id,
        mask_token=tokenizer.mask_id,
    )
    tokens = {name: tokenizer.token(i) for name, i in ids.items() if i is not None}
    return {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": int(text_len), **tokens}


def save_tokenizer(directory: str, tokenizer, text_len: int) -> None:
    """tokenizer.json and tokenizer_config.json: AutoTokenizer.from_pretrained(directory) then
    gives the run's ids (padding='max_length', max_length=text_len, truncation=True)."""
    tokenizer.save(os.path.join(directory, TOKENIZER_FILE))
    with open(os.path.join(directory, TOKENIZER_CONFIG_FILE), "w") as f:
        json.dump(tokenizer_config(tokenizer, text_len), f, indent=2)
