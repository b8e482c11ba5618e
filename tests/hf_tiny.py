"""Tiny random transformers CLIP / SigLIP models and inputs for them (CPU, seconds)."""

import os

import numpy as np
import torch
import transformers

VOCAB = 50
EOS = 3  # CLIP's pooling token in these models
TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


def tiny_clip(path=None, *, eos_token_id=EOS, hidden_act="quick_gelu", max_shard_size=None, seed=0):
    config = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=VOCAB, max_position_embeddings=16, pad_token_id=1, bos_token_id=0,
            eos_token_id=eos_token_id, hidden_act=hidden_act, **TOWER,
        ),
        vision_config=dict(image_size=32, patch_size=16, hidden_act=hidden_act, **TOWER),
        projection_dim=24,
    )  # fmt: skip
    return _save(transformers.CLIPModel, config, path, max_shard_size, seed)


def tiny_siglip(path=None, *, max_shard_size=None, seed=0):
    config = transformers.SiglipConfig(
        text_config=dict(vocab_size=VOCAB, max_position_embeddings=16, pad_token_id=1, bos_token_id=0,
                         eos_token_id=EOS, **TOWER),
        vision_config=dict(image_size=32, patch_size=16, **TOWER),
    )  # fmt: skip
    return _save(transformers.SiglipModel, config, path, max_shard_size, seed)


def _save(cls, config, path, max_shard_size, seed):
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():  # random, not the init's constants: a swapped scale or bias must show
        for name, p in model.named_parameters():
            if name.startswith("logit_") or "class_embedding" in name or "probe" in name:
                p.copy_(torch.randn_like(p) * 0.5)
    if path is not None:
        extra = {"max_shard_size": max_shard_size} if max_shard_size else {}
        model.save_pretrained(path, safe_serialization=True, **extra)
    return model


def inputs(batch=3, length=10, seed=0, eos=EOS, pad=1, token_after_eos=True):
    """Images in [-1, 1] (NHWC) and right-padded texts ending in `eos`, rows of different lengths.
    With `token_after_eos`, row 1 has a real token after its EOS, so pooling at the EOS (or the
    largest id) and pooling the last real token give different features."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, size=(batch, 32, 32, 3)).astype(np.float32)
    ids = np.full((batch, length), pad, np.int64)
    mask = np.zeros((batch, length), np.int64)
    for row in range(batch):
        n = length - 3 * row  # the first row fills the length, the others are padded
        words = rng.integers(4, eos if eos > 4 else VOCAB - 1, n - 2)
        tokens = np.concatenate([[0], words, [eos]])
        if token_after_eos and row == 1:
            tokens = np.concatenate([[0], words[:-1], [eos], words[-1:]])
        ids[row, :n] = tokens
        mask[row, :n] = 1
    return images, ids, mask


def hf_outputs(model, images, ids, mask, pixels=((0.5,) * 3, (0.5,) * 3), use_mask=True):
    """(image embeddings, text embeddings, logits_per_text) of a transformers CLIP / SigLIP given
    vlpjax's [-1, 1] images, normalised as the HF model expects (`pixels`: its mean and std)."""
    mean, std = (np.asarray(v, np.float32) for v in pixels)
    pixel_values = ((images + 1) / 2 - mean) / std
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask) if use_mask else None,
            pixel_values=torch.tensor(pixel_values.transpose(0, 3, 1, 2)),
        )
    return out.image_embeds.numpy(), out.text_embeds.numpy(), out.logits_per_text.numpy()


def vlpjax_outputs(model, images, ids, mask):
    batch = {"image": images, "text_ids": ids.astype(np.int32), "text_mask": mask.astype(bool)}
    img, txt = np.asarray(model.embed_image(batch)), np.asarray(model.embed_text(batch))
    logits = txt @ img.T * float(model.scale())
    if model.bias() is not None:
        logits = logits + float(model.bias())
    return img, txt, logits


def tiny_bert(path, vocab_size, **overrides):
    """albef_shapes:tiny's text tower as a transformers BertModel, with a WordPiece tokenizer of
    `vocab_size` ids."""
    fields = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    config = transformers.BertConfig(vocab_size=vocab_size, max_position_embeddings=32, **{**fields, **overrides})
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(path)
    _word_piece(path, vocab_size)


def _word_piece(path, vocab_size):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {token: i for i, token in enumerate(specials + [f"w{i}" for i in range(vocab_size - len(specials))])}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer.save(os.path.join(str(path), "tokenizer.json"))


def tiny_clip_vision(path):
    """lit_shapes:tiny's image tower in CLIP's layout, with its activation and LayerNorm epsilon."""
    tower = {**TOWER, "num_hidden_layers": 1}
    config = transformers.CLIPVisionConfig(
        image_size=32, patch_size=16, hidden_act="gelu", layer_norm_eps=1e-6, **tower
    )
    torch.manual_seed(0)
    transformers.CLIPVisionModel(config).save_pretrained(path)
