"""UNITER on a detector's regions: uniter_regions' model, its regions now the 10 best proposals
of a detector_shapes run (frozen), each its RoIAlign bins of the pixels plus its box, computed
on the fly from the pixels (the detector's backbone and RPN; its box head is not read). Train
detector_shapes first, then:

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
        regions=regions,  # feature_dim follows the detector: roi_size**2 x its channels
    )
    # Regions: RoIAlign bins of the pixels only, without the box head (it reads the map's bins
    # too). Measured after 300 steps (README, Results): the pixels' bins alone 0.936 t2i R@1 with
    # NMS at 0.5 (one proposal per object; 0.910 at 0.7, which leaves overlapping copies); the
    # box head's features, which name each object's colour and shape, 0.812; the map's bins,
    # trained for objectness alone, 0.298, with the pixels' 0.445.
    c.model.image.detector.update(map_bins=False, box_head=0, nms_threshold=0.5)
    c.init.update(checkpoint="workdirs/detector_shapes", load=(r"img/detector/.*",), rename=(("img/detector/", ""),))
    c.rules.frozen = (r"img/detector/.*",)
    return c
