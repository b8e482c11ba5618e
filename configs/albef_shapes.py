"""ALBEF on synthetic_shapes: ViT + BERT-style text whose last layers cross-attend to the image;
ITC + ITM with hard negatives from the global batch + MLM, then retrieval re-ranked by ITM.

    vlpjax train --config configs/albef_shapes.py --workdir workdirs/albef_shapes
"""

from vlpjax.config import base_recipe, scale_switches


def get_config(arg=None):
    c = base_recipe(__file__, "clip_shapes").get_config()
    # 48 px with 16 px patches: a 3x3 patch grid on the scenes' 3x3 cell grid, one object per
    # patch. At 64 px objects straddle patches, and shape recognition (zero-shot 0.19 vs 0.46)
    # and the VQA questions about an object at a position suffer. Build the data with
    # `vlpjax data build synthetic_shapes --image_size 48`.
    c.data.image_size = 48
    c.model = dict(
        family="fusion",
        # Fixed sin-cos positions: as strong as the patch content from step 0, which VQA's
        # "what is at the top left" questions need (learned ones start some 40x weaker than the patch embedding).
        image=dict(
            kind="vit",
            variant="x/16",
            width=128,
            depth=4,
            mlp_dim=512,
            num_heads=2,
            image_size=48,
            pool="gap",
            posemb="sincos2d",
        ),
        # 2 text-only layers (the ITC text encoder), then 2 layers with cross-attention (the fusion).
        text=dict(
            kind="bert",
            hidden_size=128,
            num_hidden_layers=4,
            cross_attention_from=2,
            num_attention_heads=2,
            intermediate_size=512,
            max_position_embeddings=32,
        ),
        fusion=dict(layout="albef"),
        fusion_posemb=False,  # True: the fusion sees each patch's sin-cos position again (vqa_shapes)
        embed_dim=128,
        **scale_switches(),  # dtype, attention, remat, scan_layers: README "Scale switches"
    )
    c.objectives = dict(itc=dict(weight=1.0), itm=dict(weight=1.0), mlm=dict(weight=1.0, prob=0.15))
    c.train.update(batch_size=128, steps=1000, checkpoint_every=250)
    c.optim.lr = 5e-4
    c.evals.retrieval.itm_top_k = 16  # each query's top 16 re-ranked by the ITM head
    if arg == "tiny":
        shrink_for_tests(c)
    return c


def shrink_for_tests(c):
    """A few seconds on CPU: the `:tiny` variants of every fusion recipe."""
    c.data.update(image_size=32, train_size=512, test_size=64)
    if c.model.image.kind == "vit":
        c.model.image.update(image_size=32, width=32, depth=min(c.model.image.depth, 1), mlp_dim=64)
    else:
        c.model.image.update(width=32, depth=0)
    c.model.text.update(hidden_size=32, intermediate_size=64, num_hidden_layers=min(c.model.text.num_hidden_layers, 2))
    if c.model.text.get("cross_attention_from") is not None:
        c.model.text.cross_attention_from = 1
    if c.model.fusion.layout != "albef":
        c.model.fusion.update(width=32, depth=1, mlp_dim=64)
    c.model.embed_dim = 32
    c.train.update(batch_size=32, steps=8, log_every=2, checkpoint_every=4)
    for spec in c.evals.values():
        spec.batch_size = 32
    if "retrieval" in c.evals:
        c.evals.retrieval.itm_top_k = 4
