"""METER on synthetic_shapes: unimodal ViT and BERT towers joined by a co-attention fusion
encoder (two streams that cross-attend to each other); ITC + ITM + MLM.

    vlpjax train --config configs/meter_shapes.py --workdir workdirs/meter_shapes
"""

from vlpjax.config import base_recipe

albef = base_recipe(__file__, "albef_shapes")


def get_config(arg=None):
    c = albef.get_config()
    c.model.text.update(num_hidden_layers=2, cross_attention_from=None)
    c.model.fusion = dict(layout="co_attention", width=128, depth=2, num_heads=2, mlp_dim=512)
    c.train.steps = 300
    if arg == "tiny":
        albef.shrink_for_tests(c)
    return c
