"""LiT with a T5 text tower: clip_shapes' image tower loaded and frozen (as lit_shapes), and a
T5 encoder (v1.1: gated-GELU, relative position buckets, RMS norm) as the text tower, its
embedding the mean of the real tokens. From scratch on the shapes tokenizer:

    vlpjax train --config configs/lit_t5.py --workdir workdirs/lit_t5 \\
        --config.init.checkpoint=workdirs/clip_shapes

or from a Hugging Face T5 / FLAN-T5 checkpoint, whose shape and tokenizer the tower takes:

    vlpjax train --config configs/lit_t5.py --workdir workdirs/lit_t5 \\
        --config.init.checkpoint=workdirs/clip_shapes \\
        --config.model.text.kind=hf --config.init.hf.text=/models/flan-t5-small
"""

from vlpjax.config import base_recipe


def get_config(arg=None):
    c = base_recipe(__file__, "lit_shapes").get_config(arg)
    width = c.model.text.width
    c.model.text = dict(
        kind="t5", d_model=width, d_kv=width // 2, d_ff=4 * width, num_layers=c.model.text.depth, num_heads=2,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
    )  # fmt: skip
    return c
