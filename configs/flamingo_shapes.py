"""Flamingo on synthetic_shapes: the frozen ViT of a clip_shapes run and the frozen LM of an
lm_shapes run, joined by a perceiver resampler and tanh-gated cross-attention. Only the
adapters and the `<image>` / `<|endofchunk|>` embedding rows train.

    vlpjax train  --config configs/clip_shapes.py --workdir workdirs/clip_shapes
    vlpjax train  --config configs/lm_shapes.py --workdir workdirs/lm_shapes
    vlpjax export --config configs/lm_shapes.py --workdir workdirs/lm_shapes --out workdirs/lm_shapes/hf
    vlpjax train  --config configs/flamingo_shapes.py --workdir workdirs/flamingo_shapes
    vlpjax generate --config configs/flamingo_shapes.py --workdir workdirs/flamingo_shapes \\
        --image some.png --prompt "<image>"

Any Hugging Face GPT-2 / LLaMA directory can replace the LM: --config.model.lm.path=DIR.
"""

from vlpjax.config import base_recipe, scale_switches

clip = base_recipe(__file__, "clip_shapes")


def get_config(arg=None):
    c = clip.get_config()
    c.data.update(task="interleaved", flip=False, text_len=64)
    c.data.chunks = 2  # (image, text) chunks per training sequence
    c.model = dict(
        family="flamingo",
        image=c.model.image.to_dict(),  # clip_shapes' ViT, loaded from its checkpoint and frozen
        lm=dict(path="workdirs/lm_shapes/hf"),
        flamingo=dict(cross_every=1, num_latents=8, resampler_depth=2, resampler_heads=4, cross_heads=4),
        **scale_switches(),  # dtype, attention, remat, scan_layers: README "Scale switches"
    )
    c.objectives = dict(lm=dict(weight=1.0))
    c.init = dict(
        checkpoint="workdirs/clip_shapes", load=(r"img/.*",), strict=True, hf=dict(model="", image="", text="")
    )
    c.rules.frozen = (r"img/.*", r"lm/.*")
    c.rules.no_decay = c.rules.no_decay + (r".*_gate$", r".*latents$", r"new_token_.*")
    c.train.update(batch_size=64, steps=1000, checkpoint_every=250)
    c.optim.update(lr=1e-3, warmup_steps=50)
    # Few-shot generation on held-out images, before training (closed gates) and after.
    c.eval = dict(
        batch_size=50,
        images=200,
        shots=2,
        beams=1,
        caption_tokens=32,
        answer_tokens=3,
        at_start=True,
        zero_shot=False,
        png_queries=0,
        itm_top_k=0,
    )
    if arg == "tiny":
        c.data.update(image_size=32, train_size=512, test_size=64, text_len=48)
        c.model.image.update(image_size=32, width=32, depth=1, mlp_dim=64)
        c.model.flamingo.update(num_latents=2, resampler_depth=1, resampler_heads=2, cross_heads=2)
        c.train.update(batch_size=16, steps=8, log_every=2, checkpoint_every=4)
        c.eval.update(batch_size=8, images=8, caption_tokens=6)
    return c
