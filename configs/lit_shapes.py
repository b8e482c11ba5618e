"""LiT on synthetic_shapes: the image tower of a clip_shapes run, loaded and frozen; the text
tower and both projections train. Run clip_shapes first (e.g. `make demo`), then:

    vlpjax train --config configs/lit_shapes.py --workdir workdirs/lit_shapes \\
        --config.init.checkpoint=workdirs/clip_shapes
"""

from vlpjax.config import base_recipe


def get_config(arg=None):
    c = base_recipe(__file__, "clip_shapes").get_config(arg)
    c.init.checkpoint = "workdirs/clip_shapes"  # the workdir of the run whose image tower LiT locks
    c.init.load = (r"img/.*",)
    c.rules.frozen = (r"img/.*",)
    return c
