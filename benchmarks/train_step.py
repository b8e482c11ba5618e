"""Train-step speed of vlpjax vs PyTorch (transformers' CLIPModel of the same dimensions).

    .venv/bin/python benchmarks/train_step.py [--configs tiny vit_s16] [--steps 5] [--xla_flags default|none]

For each config it prints steps/s, examples/s, the step's model FLOPs (counted analytically by
`model_flops`, independent of the backend), the model FLOP/s achieved, MFU (model FLOP/s over
the float32 matmul peak measured in this process), XLA's own FLOP count of the compiled step
(its cost analysis: hardware FLOPs as XLA sees them, which on GPU leaves out the matmuls it
hands to cuBLAS, so it is not used for MFU), and the PyTorch step's speed in the same process.
Medians over the timed steps.

`--xla_flags default` runs with the flags `vlpjax train` sets (vlpjax/xla_flags.py);
`--xla_flags none` with only what XLA_FLAGS already holds, to measure what those flags change.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

XLA_FLAG_CHOICES = ("default", "none")


def _apply_xla_flags(argv) -> str:
    """Apply `--xla_flags` from argv to the environment; must run before jax is imported."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--xla_flags", choices=XLA_FLAG_CHOICES, default="default")
    choice = pre.parse_known_args(argv)[0].xla_flags
    if choice == "default":
        from vlpjax.xla_flags import apply_default_flags

        apply_default_flags()
    return choice


if __name__ == "__main__":  # as a script only: importing this module (tests) changes no flags
    _apply_xla_flags(sys.argv[1:])

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vlpjax.models.vlp import build_dual_encoder
from vlpjax.objectives.contrastive import softmax_loss


@dataclasses.dataclass(frozen=True)
class Bench:
    name: str
    image_size: int
    patch: int
    width: int
    depth: int
    heads: int
    text_width: int
    text_depth: int
    text_len: int
    vocab: int
    batch: int
    embed_dim: int = 256


CONFIGS = {
    "tiny": Bench("tiny", 64, 16, 128, 4, 2, 128, 2, 32, 256, 256, 128),
    "vit_s16": Bench("vit_s16", 224, 16, 384, 12, 6, 384, 6, 32, 1024, 32, 256),
}


def image_tokens(b: Bench) -> int:
    return (b.image_size // b.patch) ** 2 + 1  # patches and the class token


def model_flops(b: Bench) -> dict[str, float]:
    """Model FLOPs of one training step: forward and backward, in float32 multiply-adds x 2.

    The usual count (Kaplan et al. 2020; PaLM, appendix B): a weight matrix of n parameters costs
    2n FLOPs per token going forward and 4n going back (the gradients of its input and of
    itself), 6n in all. Per tower, with width D, depth L, MLP width M = 4D, T tokens per example:

      dense      6 * T * L * (4 D^2 + 2 D M)   query, key, value and output; the two MLP matrices
               + 4 * patches * (P^2 * 3 * D)   patch embedding (image tower; no input gradient)
               + 6 * D * E                     projection to the joint space (pooled token only)
      attention  3 * L * 4 * T^2 * D           forward, q.k^T and the weighted sum of values are
                                               2 * T^2 * D each; backward twice the forward. Full
                                               T^2 for the causal text tower too: masking does
                                               not skip the computation.

    times the batch B, plus the contrastive logits [B, B] over E dims: 3 * 2 * B^2 * E.
    Not counted: embedding lookups, softmax, LayerNorm, activations, biases and the optimizer
    (all elementwise). Unlike XLA's cost analysis this does not depend on the backend.
    """
    t_img, t_txt = image_tokens(b), b.text_len
    patches = t_img - 1
    dense_img = 6 * t_img * b.depth * 12 * b.width**2 + 4 * patches * b.patch**2 * 3 * b.width
    dense_txt = 6 * t_txt * b.text_depth * 12 * b.text_width**2
    projections = 6 * (b.width + b.text_width) * b.embed_dim
    out = {
        "dense": b.batch * (dense_img + dense_txt + projections),
        "attention": b.batch * 3 * 4 * (b.depth * t_img**2 * b.width + b.text_depth * t_txt**2 * b.text_width),
        "logits": 3 * 2 * b.batch**2 * b.embed_dim,
    }
    out["total"] = out["dense"] + out["attention"] + out["logits"]
    return out


def matmul_params(b: Bench) -> dict[str, int]:
    """Weight-matrix parameters per tower, projection included: the N of the 6 * N * T rule."""
    return {
        "img": b.depth * 12 * b.width**2 + b.patch**2 * 3 * b.width + b.width * b.embed_dim,
        "txt": b.text_depth * 12 * b.text_width**2 + b.text_width * b.embed_dim,
    }


def median_time(fn, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak_flops(n: int = 2048, steps: int = 10) -> float:
    """float32 matmul FLOP/s of this machine, as XLA runs a large square matmul."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    return 2 * n**3 / median_time(lambda: mm(a).block_until_ready(), steps)


def batch_arrays(b: Bench):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(b.batch, b.image_size, b.image_size, 3)).astype(np.float32)
    ids = rng.integers(1, b.vocab, size=(b.batch, b.text_len)).astype(np.int64)
    mask = np.ones_like(ids)
    return images, ids, mask


def model_spec(b: Bench) -> dict:
    return {
        "image": {
            "kind": "vit",
            "variant": f"x/{b.patch}",
            "width": b.width,
            "depth": b.depth,
            "mlp_dim": 4 * b.width,
            "num_heads": b.heads,
            "image_size": b.image_size,
            "pool": "cls",
            "act": "quick_gelu",
        },
        "text": {
            "kind": "causal",
            "vocab_size": b.vocab,
            "width": b.text_width,
            "depth": b.text_depth,
            "num_heads": b.heads,
            "mlp_dim": 4 * b.text_width,
            "max_len": b.text_len,
            "act": "quick_gelu",
        },
        "embed_dim": b.embed_dim,
    }


def vlpjax_step(b: Bench, steps: int):
    spec = model_spec(b)
    graphdef, params = nnx.split(build_dual_encoder(spec, rngs=nnx.Rngs(0)))
    tx = optax.adamw(1e-4)
    opt_state = tx.init(params)
    images, ids, mask = batch_arrays(b)
    batch = {
        "image": jnp.asarray(images),
        "text_ids": jnp.asarray(ids, jnp.int32),
        "text_mask": jnp.asarray(mask, bool),
    }

    def step(params, opt_state, batch):
        def loss_fn(p):
            out = nnx.merge(graphdef, p)(batch)
            return softmax_loss(out["img_emb"], out["txt_emb"], out["logit_scale"])[0]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, batch).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = float(cost.get("flops", float("nan")))
    state = {"params": params, "opt": opt_state}

    def run():
        state["params"], state["opt"], loss = compiled(state["params"], state["opt"], batch)
        loss.block_until_ready()

    return median_time(run, steps), xla_flops


def torch_step(b: Bench, steps: int) -> float:
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=b.vocab,
            hidden_size=b.text_width,
            intermediate_size=4 * b.text_width,
            num_hidden_layers=b.text_depth,
            num_attention_heads=b.heads,
            max_position_embeddings=b.text_len,
            hidden_act="quick_gelu",
        ),
        vision_config=dict(
            hidden_size=b.width,
            intermediate_size=4 * b.width,
            num_hidden_layers=b.depth,
            num_attention_heads=b.heads,
            image_size=b.image_size,
            patch_size=b.patch,
            hidden_act="quick_gelu",
        ),
        projection_dim=b.embed_dim,
    )
    model = CLIPModel(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images, ids, mask = batch_arrays(b)
    pixels = torch.tensor(images).permute(0, 3, 1, 2).contiguous()
    ids, mask = torch.tensor(ids), torch.tensor(mask)

    def run():
        optimizer.zero_grad(set_to_none=True)
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True)
        out.loss.backward()
        optimizer.step()

    return median_time(run, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument(
        "--xla_flags", choices=XLA_FLAG_CHOICES, default="default", help="applied before jax starts (see docstring)"
    )
    args = parser.parse_args()
    peak = matmul_peak_flops()
    device = jax.devices()[0]
    print(
        f"device: {device.platform} ({device.device_kind}), {os.cpu_count()} CPU cores; "
        f"measured float32 matmul peak {peak / 1e9:.1f} GFLOP/s; --xla_flags {args.xla_flags}: "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    )
    header = (
        f"{'config':<8} {'batch':>5} {'steps/s':>8} {'ex/s':>8} {'model GFLOP':>11} {'GFLOP/s':>8} {'MFU':>6} "
        f"{'XLA GFLOP':>10} {'torch steps/s':>13} {'vlpjax/torch':>12}"
    )
    rows = []
    for name in args.configs:
        b = CONFIGS[name]
        seconds, xla_flops = vlpjax_step(b, args.steps)
        flops = model_flops(b)["total"]
        torch_seconds = float("nan") if args.no_torch else torch_step(b, args.steps)
        achieved = flops / seconds
        rows.append(
            f"{name:<8} {b.batch:>5} {1 / seconds:>8.3f} {b.batch / seconds:>8.1f} {flops / 1e9:>11.1f} "
            f"{achieved / 1e9:>8.1f} {achieved / peak:>6.1%} {xla_flops / 1e9:>10.1f} "
            f"{1 / torch_seconds:>13.3f} {torch_seconds / seconds:>12.2f}"
        )
    print(header)
    print("\n".join(rows))
    print("model GFLOP: analytic count (model_flops); XLA GFLOP: the compiled step's cost analysis (hardware FLOPs)")


if __name__ == "__main__":
    main()
