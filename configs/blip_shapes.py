"""BLIP-style pretraining on synthetic_shapes: albef_shapes plus an image-grounded text decoder.

The decoder is the text encoder's layers run again with a causal self-attention of their own;
its embeddings, cross-attention and MLPs are the encoder's (models/grounded_decoder.py). One
step trains ITC, ITM with hard negatives, MLM and captioning (LM) together.

    vlpjax train --config configs/blip_shapes.py --workdir workdirs/blip_shapes

Start from an albef_shapes run (everything but the decoder's own layers loads):

    vlpjax train --config configs/blip_shapes.py --workdir workdirs/blip_shapes \\
        --config.init.checkpoint=workdirs/albef_shapes
"""

from vlpjax.config import base_recipe, evaluator

albef = base_recipe(__file__, "albef_shapes")


def get_config(arg=None):
    c = albef.get_config()
    c.model.decoder = True
    c.objectives.lm = dict(weight=1.0)
    c.init.load = (r"(?!decoder/).*",)  # with init.checkpoint: all but the decoder's own parameters
    # Captions of the first 200 test images (coca_shapes' and flamingo_shapes' images), greedy,
    # from [CLS] up to [SEP] within the 32 text positions.
    c.evals.caption = evaluator("captioning", images=200, max_tokens=31, batch_size=c.evals.retrieval.batch_size)
    if arg == "tiny":
        albef.shrink_for_tests(c)
        c.evals.caption.update(images=8, max_tokens=8)
    return c
