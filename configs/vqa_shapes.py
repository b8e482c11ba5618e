"""VQA on synthetic_shapes: fine-tune an albef_shapes checkpoint with a new answer classifier
over the training answers. Run albef_shapes first, then:

    vlpjax train --config configs/vqa_shapes.py --workdir workdirs/vqa_shapes \\
        --config.init.checkpoint=workdirs/albef_shapes

The same recipe fine-tunes on a user folder's VQA rows with
`--config.data.name=image_text_folder --config.data.folder=DIR` (see README).
"""

from vlpjax.config import base_recipe, evaluator

albef = base_recipe(__file__, "albef_shapes")


def get_config(arg=None):
    c = albef.get_config()
    c.data.task = "vqa"
    c.objectives = dict(vqa=dict(weight=1.0))
    c.init.checkpoint = "workdirs/albef_shapes"
    c.init.load = (r"(?!vqa_head/).*",)  # everything but the new answer head
    # "What shape is at the top left?": the fusion sees each patch's position again (no parameters,
    # so the pretrained checkpoint loads unchanged).
    c.model.fusion_posemb = True
    # No horizontal flip. With it, half the "is X left of Y?" questions arrive as "is X right of
    # Y?" on the mirrored image with the same answer, so the answer is the XOR of the word and the
    # column order, and neither alone correlates with it. Trained with the flip, "left of" stayed
    # at chance (0.50) while "above", which a flip leaves alone, reached 0.85.
    c.data.flip = False
    # Heads VQA does not use: frozen, so they hold no optimizer state.
    c.rules.frozen = (r"(itm_head|mlm_head|img_proj|txt_proj)/.*", r"logit_scale")
    c.train.update(steps=3000, checkpoint_every=500)
    c.optim.update(lr=5e-4, warmup_steps=100)
    c.evals = dict(vqa=evaluator("vqa", mode="classify"))  # the answer head's top answer, every test question
    if arg == "tiny":
        albef.shrink_for_tests(c)
    return c
