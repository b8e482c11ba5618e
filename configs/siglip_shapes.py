"""SigLIP on synthetic_shapes: the clip_shapes towers with the chunked (ring) sigmoid loss.

vlpjax train --config configs/siglip_shapes.py --workdir workdirs/siglip_shapes
"""

from vlpjax.config import base_recipe


def get_config(arg=None):
    c = base_recipe(__file__, "clip_shapes").get_config(arg)
    c.model.contrastive = "sigmoid"
    c.objectives.itc.chunked = True  # ppermute ring: memory per device independent of device count
    return c
