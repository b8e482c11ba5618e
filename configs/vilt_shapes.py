"""ViLT on synthetic_shapes: no unimodal towers to speak of (patch embeddings and word
embeddings), one merged-attention transformer over the concatenated sequence; ITC + ITM + MLM.
ITC here scores pooled raw embeddings: it is weak by design and serves to mine ITM negatives.

    vlpjax train --config configs/vilt_shapes.py --workdir workdirs/vilt_shapes
"""
from vlpjax.config import base_recipe

albef = base_recipe(__file__, "albef_shapes")


def get_config(arg=None):
    c = albef.get_config()
    c.model.image.update(depth=0)  # raw patch tokens (+ position embeddings)
    c.model.text.update(num_hidden_layers=0, cross_attention_from=None)  # word embeddings only
    c.model.fusion = dict(layout="merged", width=128, depth=4, num_heads=2, mlp_dim=512)
    c.train.steps = 300
    if arg == "tiny":
        albef.shrink_for_tests(c)
    return c
