"""LiT from a Hugging Face vision tower: a CLIP or SigLIP model (or its vision part), or a plain
ViTModel, loaded from init.hf.image and frozen; the text tower and both projections train. The
tower takes its shape, and data.image_size, from the directory (model.image.kind='hf'):

    vlpjax data build synthetic_shapes --image_size 224 --data_dir data
    vlpjax train --config configs/lit_hf.py --workdir workdirs/lit_hf \\
        --config.init.hf.image=/models/clip-vit-base-patch16
"""

from vlpjax.config import base_recipe


def get_config(arg=None):
    c = base_recipe(__file__, "clip_shapes").get_config(arg)
    c.model.image = dict(kind="hf")
    c.rules.frozen = (r"img/.*",)
    return c
