"""UNITER on a detector's regions: uniter_regions' model, its regions now the 10 best proposals
of a detector_shapes run (frozen), each its box head's feature plus its box, computed on the
fly from the pixels. Train detector_shapes first, then:

    vlpjax train --config configs/uniter_detector.py --workdir workdirs/uniter_detector \\
        --config.init.checkpoint=workdirs/detector_shapes

Compare with uniter_regions at 64 px (ground-truth boxes), the same 300 steps.
"""

from vlpjax.config import base_recipe

detector = base_recipe(__file__, "detector_shapes")
uniter = base_recipe(__file__, "uniter_regions")


def get_config(arg=None):
    c = uniter.get_config(arg)
    found = detector.get_config(arg).model  # the detector the checkpoint holds
    c.data.update(region_grid=0, image_size=found.detector.image_size)
    regions = {k: v for k, v in c.model.image.items() if k not in ("kind", "feature_dim")}
    c.model.image = dict(
        kind="detector_regions",
        backbone=found.backbone.to_dict(),
        detector=found.detector.to_dict(),
        regions=regions,  # feature_dim follows the detector: its box_head width (or its bins)
    )
    # Regions: the box head's features (trained to name each object's colour and shape from the
    # RoIAlign bins of the map and the pixels). Measured after 300 steps (README, Results): t2i
    # R@1 0.937; the pixels' bins alone (map_bins=False, box_head=0) 0.921; the map's bins alone,
    # trained for objectness only, 0.298. NMS at 0.5 leaves one proposal per object where 0.7
    # leaves overlapping copies (pixels' bins: 0.910 at 0.7).
    c.model.image.detector.update(nms_threshold=0.5)
    c.init.update(checkpoint="workdirs/detector_shapes", load=(r"img/detector/.*",), rename=(("img/detector/", ""),))
    c.rules.frozen = (r"img/detector/.*",)
    return c
