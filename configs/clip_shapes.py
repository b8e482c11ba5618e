"""CLIP on synthetic_shapes: ViT-x/16 + causal text tower, softmax ITC. The `make demo` recipe.

vlpjax train --config configs/clip_shapes.py --workdir workdirs/clip_shapes
"""

import ml_collections

from vlpjax.config import evaluator, scale_switches


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = dict(
        name="synthetic_shapes",
        data_dir="data",
        image_size=64,
        train_size=50_000,
        test_size=1_000,
        folder="",  # image_text_folder: the folder holding manifest.jsonl
        shards="",  # webdataset: its tar shards, 'dir/{00000..00099}.tar' (as built)
        split_seed=0,  # folders, webdataset: the random hold-out's seed (`vlpjax data build --seed`)
        tokenizer="",  # a tokenizer.json or HF tokenizer directory; "" = the dataset's own
        text_len=32,
        flip=True,  # shapes captions swap left/right with the image
        crop_scale=(1.0, 1.0),  # random resized crop area range; (1, 1) keeps the whole image
        task="image_text",  # or "vqa": (image, question, answers) rows
        region_grid=0,  # > 0: region features pooled from the dataset's boxes (uniter_regions)
        max_regions=3,
        max_answers=0,  # VQA answer vocabulary: the N most frequent training answers; 0 = all
    )

    c.model = dict(
        family="dual_encoder",
        # CLIP's layout (class token with its own position, a LayerNorm before the blocks, no patch
        # bias, text pooled at [SEP]), so a run exports to a transformers CLIPModel and a CLIP
        # vision tower loads into it (README, Import and export).
        image=dict(
            kind="vit",
            variant="x/16",
            width=128,
            depth=4,
            mlp_dim=512,
            num_heads=2,
            image_size=64,
            pool="cls",
            ln_pre=True,
            cls_posemb=True,
            patch_bias=False,
        ),
        text=dict(
            kind="causal", width=128, depth=2, num_heads=2, mlp_dim=512, max_len=32, pool="last_real", eos_id=None
        ),
        embed_dim=128,
        contrastive="softmax",
        image_proj="linear",  # linear | linear_bias | none (SigLIP's image tower)
        text_proj="linear",
        **scale_switches(),  # dtype, attention, remat, scan_layers: README "Scale switches"
    )
    c.objectives = dict(itc=dict(weight=1.0, chunked=False))

    c.optim = dict(lr=1e-3, warmup_steps=50, min_lr_ratio=0.0, weight_decay=0.05, b1=0.9, b2=0.999, clip_norm=1.0)
    # Regex rules over parameter paths ("img/blocks/0/attn/query/kernel"): first match wins.
    c.rules = dict(
        frozen=(),
        lr_mult=(),
        no_decay=(r".*bias$", r".*(ln|norm)[^/]*/scale$", r".*logit_(scale|bias)$", r".*(pos_embed|cls_token)$"),
    )
    # checkpoint: parameters matching `load` from another run; hf: Hugging Face directories for
    # the whole model or one tower (README, Import and export). Both are loaded before step 1.
    # rename: (our prefix, the checkpoint's prefix) pairs, e.g. (("img/detector/", ""),) loads a
    # detector_shapes run into uniter_detector's image encoder.
    c.init = dict(checkpoint="", load=(), rename=(), strict=True, hf=dict(model="", image="", text=""))

    c.train = dict(
        batch_size=256,  # global
        steps=240,
        log_every=20,
        checkpoint_every=100,
        keep_checkpoints=2,
        parallelism="mesh",
        # k > 1: each step runs k micro-batches of batch_size / k rows. Exact for ITC (GradCache);
        # other objectives average over micro-batches (README, "Gradient accumulation").
        grad_accum=1,
        # A process of a multi-process job not heard from for this long is taken for dead: the
        # others stop (naming it) instead of waiting in a collective. The tests use a few seconds.
        peer_timeout_s=300,
    )
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    # Named evaluators, run at the end (and every `every` steps), logged as <name>/<metric>
    # (README, Evaluation): retrieval on the test split's pairs and zero-shot over the 32
    # colour-shape classes.
    c.evals = dict(retrieval=evaluator("retrieval", png_queries=4), zero_shot=evaluator("zero_shot"))
    if arg == "tiny":  # a few seconds on CPU: tests and smoke runs
        c.data.image_size = 32
        c.data.train_size = 512
        c.data.test_size = 64
        c.model.image.update(image_size=32, width=32, depth=1, mlp_dim=64)
        c.model.text.update(width=32, depth=1, mlp_dim=64)
        c.model.embed_dim = 32
        c.train.update(batch_size=32, steps=8, log_every=2, checkpoint_every=4)
        for spec in c.evals.values():
            spec.batch_size = 32
    return c
