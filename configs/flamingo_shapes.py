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

from vlpjax.config import base_recipe, evaluator, scale_switches

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
    # Few-shot generation on the first 200 held-out images, before training (closed gates) and
    # after. On interleaved documents (data.name=interleaved_folder) there is nothing to caption:
    # turn `caption` and `vqa` off and `lm` (held-out next-token metrics) on.
    shots = dict(shots=2, images=200, batch_size=50, at_start=True)
    c.evals = dict(
        caption=evaluator("few_shot", task="captioning", max_tokens=32, **shots),
        vqa=evaluator("few_shot", task="vqa", max_tokens=3, **shots),
        lm=evaluator("perplexity", enabled=False, batch_size=50, at_start=True),
    )
    if arg == "tiny":
        c.data.update(image_size=32, train_size=512, test_size=64, text_len=48)
        c.model.image.update(image_size=32, width=32, depth=1, mlp_dim=64)
        c.model.flamingo.update(num_latents=2, resampler_depth=1, resampler_heads=2, cross_heads=2)
        c.train.update(batch_size=16, steps=8, log_every=2, checkpoint_every=4)
        c.evals.caption.update(batch_size=8, images=8, max_tokens=6)
        c.evals.vqa.update(batch_size=8, images=8)
        c.evals.lm.batch_size = 8
    return c
