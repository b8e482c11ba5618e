"""A two-stage detector trained on the synthetic_shapes boxes: the detector behind the
sparse-image (region feature) path. A ResNet-18's first two stages give a stride-8 map (8 x 8
cells at 64 px); each cell holds 6 anchors (sides 10 and 18 px, h / w 0.5, 1, 2) that the RPN
scores and refines. The box head reads each region's RoIAlign bins of the map and the pixels
and names its object (colour x shape, 32 classes) or background; its hidden layer is the region
feature uniter_detector reads. Evaluated by the recall of the test boxes by each image's 10
best proposals, and the box head's accuracy on the test boxes.

    vlpjax train --config configs/detector_shapes.py --workdir workdirs/detector_shapes
"""

from vlpjax.config import base_recipe, evaluator, scale_switches
from vlpjax.data.shapes import COLOUR_NAMES, SHAPES

clip = base_recipe(__file__, "clip_shapes")


def get_config(arg=None):
    c = clip.get_config(arg)
    c.data.update(task="detection", max_regions=3, flip=True, crop_scale=(1.0, 1.0))
    c.model = dict(
        family="detector",
        backbone=dict(layout="18", width=32, groups=8, num_stages=2),
        detector=dict(
            image_size=c.data.image_size,
            scales=(1.25, 2.25),
            ratios=(0.5, 1.0, 2.0),
            head_width=64,
            pre_nms=100,
            nms_threshold=0.7,
            top_k=10,
            # What the box head reads of each region, and what a region model keeps.
            roi_size=4,
            sampling_ratio=2,
            min_score=0.5,
            map_bins=True,
            pixel_bins=True,
            box_head=128,
            num_classes=len(COLOUR_NAMES) * len(SHAPES),
        ),
        **scale_switches(),  # only dtype applies to a convolutional model
    )
    c.objectives = dict(rpn=dict(weight=1.0, per_image=256, positive_fraction=0.5), box_head=dict(weight=1.0))
    c.train.update(batch_size=64, steps=600, checkpoint_every=200)
    c.optim.update(lr=2e-3, warmup_steps=50)
    c.evals = dict(proposals=evaluator("proposals", iou=0.5, batch_size=250))
    if arg == "tiny":
        c.train.update(batch_size=16, steps=clip.get_config(arg).train.steps)
        c.evals.proposals.update(batch_size=32)
    return c
