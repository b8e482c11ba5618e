"""SigLIP on synthetic_shapes: clip_shapes' sizes in SigLIP's layout (a MAP head as the image
embedding, a bidirectional text tower pooled at its last position, a text head with bias) with
the chunked (ring) sigmoid loss. A run exports to a transformers SiglipModel (--format hf).

vlpjax train --config configs/siglip_shapes.py --workdir workdirs/siglip_shapes
"""

from vlpjax.config import base_recipe


def get_config(arg=None):
    c = base_recipe(__file__, "clip_shapes").get_config(arg)
    c.model.contrastive = "sigmoid"
    c.model.image.update(pool="map", ln_pre=False, cls_posemb=False, patch_bias=True)
    c.model.text.update(kind="bidirectional", pool="last")
    c.model.update(image_proj="none", text_proj="linear_bias")  # embed_dim = the image width
    c.objectives.itc.chunked = True  # ppermute ring: memory per device independent of device count
    return c
