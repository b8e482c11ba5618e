"""SigLIP on synthetic_shapes: the clip_shapes towers with the chunked (ring) sigmoid loss.

    vlpjax train --config configs/siglip_shapes.py --workdir workdirs/siglip_shapes
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location("clip_shapes", os.path.join(os.path.dirname(__file__), "clip_shapes.py"))
clip_shapes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(clip_shapes)


def get_config(arg=None):
    c = clip_shapes.get_config(arg)
    c.model.contrastive = "sigmoid"
    c.objectives.itc.chunked = True  # ppermute ring: memory per device independent of device count
    return c
