"""A small LLaMA-shaped decoder LM pretrained on the text of synthetic_shapes (captions and
answered questions): the frozen LM of flamingo_shapes. Train it, then export it in the Hugging
Face layout that `vlpjax.interop.hf.load_decoder_lm` (and transformers) read:

    vlpjax train  --config configs/lm_shapes.py --workdir workdirs/lm_shapes
    vlpjax export --config configs/lm_shapes.py --workdir workdirs/lm_shapes --out workdirs/lm_shapes/hf
"""

from vlpjax.config import base_recipe, evaluator, scale_switches


def get_config(arg=None):
    c = base_recipe(__file__, "clip_shapes").get_config()
    c.data.update(task="text", flip=False)
    c.model = dict(
        family="decoder_lm",
        # RMSNorm, rotary positions, SwiGLU and grouped-query attention: the LLaMA recipe, small.
        lm=dict(
            arch="llama",
            hidden_size=128,
            num_layers=4,
            num_heads=4,
            num_kv_heads=2,
            intermediate_size=352,
            max_positions=128,
            tie_embeddings=False,
        ),
        **scale_switches(),  # dtype, attention, remat, scan_layers: README "Scale switches"
    )
    c.objectives = dict(lm=dict(weight=1.0))
    c.train.update(batch_size=128, steps=1500, checkpoint_every=500)
    c.optim.update(lr=2e-3, warmup_steps=100)
    c.evals = dict(lm=evaluator("perplexity"))  # held-out next-token loss, accuracy, perplexity
    if arg == "tiny":
        c.data.update(image_size=32, train_size=512, test_size=64)
        c.model.lm.update(hidden_size=32, num_layers=2, intermediate_size=64)
        c.train.update(batch_size=32, steps=8, log_every=2, checkpoint_every=4)
        c.evals.lm.batch_size = 32
    return c
