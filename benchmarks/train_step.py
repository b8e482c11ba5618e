"""Train-step speed and memory of vlpjax vs PyTorch (transformers' CLIPModel of the same dimensions).

    .venv/bin/python benchmarks/train_step.py [--profile cpu|gpu] [--steps 5] [--xla_flags default|none]
    .venv/bin/python benchmarks/train_step.py --compile-time      # layers in a Python loop vs under scan
    .venv/bin/python benchmarks/train_step.py --memory-table      # the largest batch under each memory lever

`--profile cpu` (default): the `tiny` and `vit_s16` configs in float32; MFU against the float32
matmul peak measured in this process; PyTorch eager beside it.
`--profile gpu`: CLIP B/16 at 224 px with a 12-layer, 512-wide text tower (77 tokens), batch 256,
bfloat16 compute and float32 parameters with AdamW; vlpjax with `xla` and `cudnn` attention,
PyTorch eager (SDPA attention, autocast bfloat16, fused AdamW) and the same under
`torch.compile`, all in one run; MFU against 989 TFLOP/s (H100/H200 dense bf16).

Every row gives ms/step, examples/s, the step's model FLOPs (counted analytically by
`model_flops`, independent of the backend), MFU, and memory: for vlpjax the compiled step's
(XLA's memory analysis: arguments + outputs + temporaries - donated), for PyTorch on a GPU the
peak allocated. Medians over the timed steps.

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

from vlpjax.models.vlp import build_dual_encoder, build_image_encoder
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
    text_heads: int = 0  # 0: as many as the image tower


CONFIGS = {
    "tiny": Bench("tiny", 64, 16, 128, 4, 2, 128, 2, 32, 256, 256, 128),
    "vit_s16": Bench("vit_s16", 224, 16, 384, 12, 6, 384, 6, 32, 1024, 32, 256),
    "clip_b16": Bench("clip_b16", 224, 16, 768, 12, 12, 512, 12, 77, 49408, 256, 512, text_heads=8),
}


@dataclasses.dataclass(frozen=True)
class Profile:
    configs: tuple[str, ...]
    dtype: str
    attention: tuple[str, ...]  # the vlpjax rows
    torch_modes: tuple[str, ...]  # "eager", "compile"
    peak_flops: float | None  # None: measure the float32 matmul peak here


PROFILES = {
    "cpu": Profile(("tiny", "vit_s16"), "float32", ("xla",), ("eager",), None),
    "gpu": Profile(("clip_b16",), "bfloat16", ("xla", "cudnn"), ("eager", "compile"), 989e12),
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


def model_spec(b: Bench, **switches) -> dict:
    """The dual encoder of `b`; `switches`: the towers' scale switches (dtype, attention, ...)."""
    spec = {
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
            "num_heads": b.text_heads or b.heads,
            "mlp_dim": 4 * b.text_width,
            "max_len": b.text_len,
            "act": "quick_gelu",
        },
        "embed_dim": b.embed_dim,
    }
    return {**spec, "image": {**spec["image"], **switches}, "text": {**spec["text"], **switches}}


def vlpjax_step(b: Bench, steps: int, **switches):
    """(seconds per step, XLA's FLOP count, compiled step bytes) of AdamW on the softmax ITC loss.
    `switches`: the model's scale switches (dtype, attention, remat, scan_layers)."""
    graphdef, params = nnx.split(build_dual_encoder(model_spec(b, **switches), rngs=nnx.Rngs(0)))
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

    return median_time(run, steps), xla_flops, step_bytes(compiled)


def step_bytes(compiled) -> int:
    """What the compiled step holds at its peak, as XLA plans it."""
    m = compiled.memory_analysis()
    return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes


def torch_step(b: Bench, steps: int, mode: str = "eager", bf16: bool = False) -> tuple[float, float]:
    """(seconds per step, peak allocated bytes or nan) of transformers' CLIPModel with AdamW.
    On a GPU: SDPA attention and fused AdamW; `bf16` autocasts; `mode='compile'` runs the
    model under torch.compile."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    config = CLIPConfig(
        text_config=dict(
            vocab_size=b.vocab,
            hidden_size=b.text_width,
            intermediate_size=4 * b.text_width,
            num_hidden_layers=b.text_depth,
            num_attention_heads=b.text_heads or b.heads,
            max_position_embeddings=b.text_len,
            hidden_act="quick_gelu",
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
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
    model = CLIPModel._from_config(config, attn_implementation="sdpa").to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    forward = torch.compile(model) if mode == "compile" else model
    images, ids, mask = batch_arrays(b)
    pixels = torch.tensor(images).permute(0, 3, 1, 2).contiguous().to(device)
    ids, mask = torch.tensor(ids).to(device), torch.tensor(mask).to(device)

    def run():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = forward(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True)
        out.loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds = median_time(run, steps, warmup=3 if mode == "compile" else 2)
    peak = float(torch.cuda.max_memory_allocated()) if cuda else float("nan")
    return seconds, peak


def speed_table(profile: Profile, steps: int, with_torch: bool) -> None:
    peak = profile.peak_flops or matmul_peak_flops()
    device = jax.devices()[0]
    print(
        f"device: {device.platform} ({device.device_kind}), {os.cpu_count()} CPU cores; MFU against "
        f"{peak / 1e12:.3f} TFLOP/s ({'given' if profile.peak_flops else 'measured float32 matmul'}); "
        f"compute {profile.dtype}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    )
    print(
        f"{'config':<9} {'step':<18} {'batch':>5} {'ms/step':>9} {'ex/s':>9} {'model TFLOP':>11} {'MFU':>6} "
        f"{'memory GiB':>10} {'XLA TFLOP':>9}"
    )
    for name in profile.configs:
        b = CONFIGS[name]
        flops = model_flops(b)["total"]
        results = []
        for kernel in profile.attention:
            if kernel == "cudnn" and device.platform != "gpu":
                print(f"{name:<9} vlpjax cudnn: skipped, cuDNN attention needs an NVIDIA GPU")
                continue
            seconds, xla_flops, held = vlpjax_step(b, steps, dtype=profile.dtype, attention=kernel)
            results.append((f"vlpjax {kernel}", seconds, held, xla_flops))
        for mode in profile.torch_modes if with_torch else ():
            seconds, held = torch_step(b, steps, mode, bf16=profile.dtype == "bfloat16")
            results.append((f"torch {mode}", seconds, held, float("nan")))
        for label, seconds, held, xla_flops in results:
            print(
                f"{name:<9} {label:<18} {b.batch:>5} {seconds * 1e3:>9.1f} {b.batch / seconds:>9.1f} "
                f"{flops / 1e12:>11.3f} {flops / seconds / peak:>6.1%} {held / 2**30:>10.2f} {xla_flops / 1e12:>9.3f}"
            )
        fastest_torch = min((sec for label, sec, _, _ in results if label.startswith("torch")), default=None)
        if fastest_torch:
            best = min(sec for label, sec, _, _ in results if label.startswith("vlpjax"))
            print(f"{name:<9} fastest vlpjax / fastest torch speed: {fastest_torch / best:.2f}x")
    print("model TFLOP: analytic (model_flops); XLA TFLOP: the compiled step's cost analysis (hardware FLOPs)")


def compile_seconds(depth: int, scan: bool) -> tuple[float, float]:
    """(trace + lower, compile) seconds of the gradient of a `depth`-layer ViT-B/16 (224 px, batch 8)."""
    spec = dict(kind="vit", variant="B/16", depth=depth, pool="gap", scan_layers=scan)
    model = nnx.eval_shape(lambda: build_image_encoder(spec, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(model)

    def loss(p, x):
        return jnp.mean(nnx.merge(graphdef, p)(x).pooled ** 2)

    images = jax.ShapeDtypeStruct((8, 224, 224, 3), jnp.float32)
    start = time.perf_counter()
    lowered = jax.jit(jax.grad(loss)).lower(params, images)
    traced = time.perf_counter()
    lowered.compile()
    return traced - start, time.perf_counter() - traced


def compile_table(depth: int = 24, repeats: int = 3) -> None:
    """Medians over `repeats`, the two forms alternating, after one untimed warm-up compile."""
    compile_seconds(2, False)
    runs = {False: [], True: []}
    for _ in range(repeats):
        for scan in runs:
            runs[scan].append(compile_seconds(depth, scan))
    print(f"{'model':<16} {'layers in':<12} {'trace s':>8} {'compile s':>9} {'total s':>8}")
    for scan, times in runs.items():
        trace, comp = (statistics.median(t[i] for t in times) for i in (0, 1))
        label = "scan" if scan else "Python loop"
        print(f"{f'ViT-B/16 x {depth}':<16} {label:<12} {trace:>8.2f} {comp:>9.2f} {trace + comp:>8.2f}")


# The memory levers of the README's table: model switches and train.grad_accum.
LEVERS = {
    "none (float32)": (dict(dtype="float32"), 1),
    "bf16": (dict(dtype="bfloat16"), 1),
    "bf16 + remat block (scan)": (dict(dtype="bfloat16", remat="block", scan_layers=True), 1),
    "bf16 + remat + grad_accum 8": (dict(dtype="bfloat16", remat="block", scan_layers=True), 8),
}


def planned_step_bytes(b: Bench, switches: dict, accum: int, batch: int) -> int:
    """XLA's plan for one AdamW step of the `vlpjax train` gradient at `batch` rows, compiled only."""
    from vlpjax.objectives.registry import make_objective
    from vlpjax.parallel import make_mesh
    from vlpjax.parallel.sharded_objective import MeshShards
    from vlpjax.train.steps import make_gradient_fn

    spec = model_spec(b, **switches)
    graphdef, params = nnx.split(nnx.eval_shape(lambda: build_dual_encoder(spec, rngs=nnx.Rngs(0))))
    tx = optax.adamw(1e-4)
    grads_of = make_gradient_fn(
        graphdef, make_objective({"itc": {}}), MeshShards(make_mesh(devices=jax.devices()[:1])),
        accum=accum, exact_embeddings=True,
    )  # fmt: skip

    def step(params, opt_state, batch):
        _, grads = grads_of(params, {}, batch, jax.random.key(0))
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    batch_spec = {
        "image": jax.ShapeDtypeStruct((batch, b.image_size, b.image_size, 3), jnp.float32),
        "text_ids": jax.ShapeDtypeStruct((batch, b.text_len), jnp.int32),
        "text_mask": jax.ShapeDtypeStruct((batch, b.text_len), bool),
    }
    opt_state = jax.eval_shape(tx.init, params)
    return step_bytes(jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, batch_spec).compile())


def memory_table(budget_gib: float, name: str = "clip_b16") -> None:
    """Largest batch per device within `budget_gib`: XLA's planned step memory at two batch
    sizes, extrapolated linearly (activations grow with the batch; parameters and optimizer
    state do not), rounded down to a multiple of 8 (of the accumulation steps x 8 with them)."""
    b = CONFIGS[name]
    platform = jax.devices()[0].platform
    print(f"{name}: largest batch per device within {budget_gib:.0f} GiB (XLA's compile-time plan on {platform})")
    print(f"{'lever':<30} {'GiB at 64':>9} {'GiB at 128':>10} {'GiB per row':>11} {'largest batch':>13}")
    for label, (switches, accum) in LEVERS.items():
        small, large = (planned_step_bytes(b, switches, accum, n) / 2**30 for n in (64, 128))
        per_row = (large - small) / 64
        fixed = small - 64 * per_row
        unit = 8 * accum
        largest = int((budget_gib - fixed) / per_row) // unit * unit if per_row > 0 else 0
        print(f"{label:<30} {small:>9.2f} {large:>10.2f} {per_row * 1024:>8.1f} MiB {largest:>13,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=list(PROFILES), default="cpu")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), help="default: the profile's")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--compile-time", action="store_true", help="only the loop-vs-scan compile-time table")
    parser.add_argument("--memory-table", action="store_true", help="only the memory-lever table")
    parser.add_argument("--budget-gib", type=float, default=141.0, help="--memory-table: memory per device")
    parser.add_argument(
        "--xla_flags", choices=XLA_FLAG_CHOICES, default="default", help="applied before jax starts (see docstring)"
    )
    args = parser.parse_args()
    if args.compile_time:
        return compile_table()
    if args.memory_table:
        return memory_table(args.budget_gib)
    profile = PROFILES[args.profile]
    if args.configs:
        profile = dataclasses.replace(profile, configs=tuple(args.configs))
    speed_table(profile, args.steps, not args.no_torch)


if __name__ == "__main__":
    main()
