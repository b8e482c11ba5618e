"""UNITER on synthetic_shapes regions: merged attention over region features instead of pixels.

The shapes data ships its boxes, so each object's box pooled to a 4x4 grid of mean colours
(48 numbers) plus its geometry stands in for a detector's region feature: the sparse path runs
end to end without a detector. ITC + ITM + MLM.

    vlpjax train --config configs/uniter_regions.py --workdir workdirs/uniter_regions
"""

from vlpjax.config import base_recipe

albef = base_recipe(__file__, "albef_shapes")
REGION_GRID = 4


def get_config(arg=None):
    c = albef.get_config()
    c.data.update(region_grid=REGION_GRID, max_regions=3)
    c.model.image = dict(
        kind="regions", feature_dim=REGION_GRID * REGION_GRID * 3, width=128, depth=1, num_heads=2, mlp_dim=512
    )
    c.model.text.update(num_hidden_layers=2, cross_attention_from=None)
    c.model.fusion = dict(layout="merged", width=128, depth=2, num_heads=2, mlp_dim=512)
    c.train.steps = 300
    if arg == "tiny":
        albef.shrink_for_tests(c)
    return c
