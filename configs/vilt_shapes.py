"""ViLT on synthetic_shapes: raw patch tokens (no vision layers) and a one-layer text encoder,
then one merged-attention transformer over the concatenated sequence; ITC + ITM + MLM.
ViLT itself has no ITC; here ITC scores the mean patch token against the text's [CLS], weak
by design, to mine the ITM negatives. The text keeps one layer so that [CLS] sees the words.

    vlpjax train --config configs/vilt_shapes.py --workdir workdirs/vilt_shapes
"""

from vlpjax.config import base_recipe

albef = base_recipe(__file__, "albef_shapes")


def get_config(arg=None):
    c = albef.get_config()
    c.model.image.update(depth=0)  # raw patch tokens (+ position embeddings)
    c.model.text.update(num_hidden_layers=1, cross_attention_from=None)
    c.model.fusion = dict(layout="merged", width=128, depth=4, num_heads=2, mlp_dim=512)
    c.train.steps = 300
    if arg == "tiny":
        albef.shrink_for_tests(c)
    return c
