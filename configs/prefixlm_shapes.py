"""PrefixLM (SimVLM) on synthetic_shapes: clip_shapes' ViT, then one 4-layer transformer over
[image tokens; text]; the image and a random-length text prefix attend both ways, the rest of
the caption is generated causally.

vlpjax train --config configs/prefixlm_shapes.py --workdir workdirs/prefixlm_shapes
"""

from vlpjax.config import base_recipe, evaluator, scale_switches

clip = base_recipe(__file__, "clip_shapes")


def get_config(arg=None):
    c = clip.get_config(arg)
    image = c.model.image.to_dict()
    c.model = dict(
        family="prefix_lm",
        image=image,  # its tokens, projected to the transformer's width, open the sequence
        prefix_lm=dict(width=128, depth=4, num_heads=2, mlp_dim=512, max_len=c.data.text_len),
        **scale_switches(),  # dtype, attention, remat, scan_layers: README "Scale switches"
    )
    c.objectives = dict(prefix_lm=dict(weight=1.0))
    # Captions of the first 200 test images (coca_shapes' and flamingo_shapes' images): a prefix
    # of the image and [CLS], then greedy decoding up to [SEP].
    batch_size = c.evals.retrieval.batch_size
    c.evals = dict(caption=evaluator("captioning", images=200, max_tokens=31, batch_size=batch_size))
    if arg == "tiny":
        c.model.prefix_lm.update(width=32, depth=2, mlp_dim=64)
        c.evals.caption.update(images=8, max_tokens=8)
    return c
