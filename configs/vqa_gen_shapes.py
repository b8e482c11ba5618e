"""Generated VQA on synthetic_shapes: a blip_shapes checkpoint's decoder fine-tuned to write the
answer after "[CLS] question [SEP]" (data.task='question_answer'). Run blip_shapes first, then:

    vlpjax train --config configs/vqa_gen_shapes.py --workdir workdirs/vqa_gen_shapes \\
        --config.init.checkpoint=workdirs/blip_shapes

Evaluated twice: answers decoded greedily up to [SEP] (`vqa`, mode generate) and the training
answers ranked by likelihood (`vqa_rank`, BLIP's rank mode).
"""

from vlpjax.config import base_recipe, evaluator

blip = base_recipe(__file__, "blip_shapes")


def get_config(arg=None):
    c = blip.get_config()
    c.data.task = "question_answer"
    c.objectives = dict(lm=dict(weight=1.0))
    c.init.checkpoint = "workdirs/blip_shapes"
    c.init.load = (r".*",)
    # As vqa_shapes: the fusion layers see each patch's position again, and no horizontal flip
    # (it would turn "left of" questions into XORs of the word and the image).
    c.model.fusion_posemb = True
    c.data.flip = False
    # What the answer decoder does not use: frozen, so it holds no optimizer state.
    c.rules.frozen = (r"(itm_head|mlm_head|img_proj|txt_proj)/.*", r"logit_scale")
    c.train.update(steps=3000, checkpoint_every=500)
    c.optim.update(lr=5e-4, warmup_steps=100)
    c.evals = dict(
        vqa=evaluator("vqa", mode="generate", max_tokens=3),
        vqa_rank=evaluator("vqa", mode="rank", candidates=128),
    )
    if arg == "tiny":
        blip.albef.shrink_for_tests(c)  # albef_shapes' `:tiny` shrinking, as blip_shapes:tiny
    return c
