"""train.grad_accum: GradCache makes ITC's accumulated gradient the full-batch gradient, on one
device and on eight, for softmax and sigmoid, while the step's temporary memory follows the
micro-batch; micro-batch averaging equals the full batch where the loss is a mean over rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tests.tiny_models import VOCAB, random_batch, tiny_dual_encoder
from tests.train_helpers import assert_trees_close, recipe_losses
from vlpjax.models.fusion_vlp import build_fusion_vlp
from vlpjax.models.lm import DecoderLM, DecoderLMConfig, LanguageModel
from vlpjax.objectives.registry import make_objective
from vlpjax.parallel import make_mesh
from vlpjax.parallel.mesh import BATCH_AXES
from vlpjax.parallel.sharded_objective import MeshShards
from vlpjax.train.accumulation import merge_micro_batches, micro_batches
from vlpjax.train.steps import make_gradient_fn

BATCH = 16


def _gradients(model, objective, batch, mesh, **accumulation):
    graphdef, params, frozen = nnx.split(model, nnx.Param, ...)
    fn = make_gradient_fn(graphdef, objective, MeshShards(mesh), **accumulation)
    batch = jax.device_put(batch, NamedSharding(mesh, P(BATCH_AXES)))
    return jax.jit(fn)(params, frozen, batch, jax.random.key(0))


def test_micro_batches_interleave_rows_and_merge_back():
    x = jnp.arange(12).reshape(6, 2)
    micro = micro_batches(x, 3)
    np.testing.assert_array_equal(micro[1], [[2, 3], [8, 9]])  # rows 1 and 4
    np.testing.assert_array_equal(merge_micro_batches(micro), x)


@pytest.mark.parametrize("devices", [1, 8])
@pytest.mark.parametrize("contrastive", ["softmax", "sigmoid"])
def test_gradcache_gives_the_full_batch_itc_gradient(devices, contrastive):
    mesh = make_mesh(devices=jax.devices()[:devices])
    model, batch, objective = tiny_dual_encoder(contrastive), random_batch(3, BATCH), make_objective({"itc": {}})
    full_metrics, full = _gradients(model, objective, batch, mesh)
    metrics, accumulated = _gradients(model, objective, batch, mesh, accum=2, exact_embeddings=True)
    assert_trees_close(accumulated, full)
    np.testing.assert_allclose(metrics["loss"], full_metrics["loss"], rtol=1e-6)
    # The exactness is GradCache's: averaging micro-batch losses changes the negatives, and the gradient.
    _, averaged = _gradients(model, objective, batch, mesh, accum=2, exact_embeddings=False)
    with pytest.raises(AssertionError):
        assert_trees_close(averaged, full, rtol=1e-3)


def _temp_bytes(accum: int) -> int:
    spec = {
        "image": {"kind": "vit", "variant": "x/8", "width": 64, "depth": 2, "mlp_dim": 256, "num_heads": 2,
                  "image_size": 64},
        "text": {"kind": "causal", "vocab_size": VOCAB, "width": 64, "depth": 2, "num_heads": 2, "mlp_dim": 256,
                 "max_len": 32},
        "embed_dim": 32,
    }  # fmt: skip
    from vlpjax.models.vlp import build_dual_encoder

    model = nnx.eval_shape(lambda: build_dual_encoder(spec, rngs=nnx.Rngs(0)))
    graphdef, params, frozen = nnx.split(model, nnx.Param, ...)
    mesh = make_mesh(devices=jax.devices()[:1])
    fn = make_gradient_fn(graphdef, make_objective({"itc": {}}), MeshShards(mesh), accum=accum, exact_embeddings=True)
    rows = 128
    batch = {
        "image": jax.ShapeDtypeStruct((rows, 64, 64, 3), jnp.float32),
        "text_ids": jax.ShapeDtypeStruct((rows, 32), jnp.int32),
        "text_mask": jax.ShapeDtypeStruct((rows, 32), bool),
    }
    compiled = jax.jit(fn).lower(params, frozen, batch, jax.random.key(0)).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_gradcache_memory_follows_the_micro_batch():
    whole, quarters = _temp_bytes(1), _temp_bytes(4)
    assert quarters < 0.4 * whole, (whole, quarters)


def _vqa_model():
    spec = {
        "image": {"kind": "vit", "variant": "mu/4", "width": 16, "depth": 1, "mlp_dim": 32, "num_heads": 2,
                  "image_size": 8},
        "text": {"kind": "bert", "vocab_size": VOCAB, "hidden_size": 16, "num_hidden_layers": 2,
                 "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 8,
                 "cross_attention_from": 1},
        "embed_dim": 8,
        "num_answers": 5,
    }  # fmt: skip
    return build_fusion_vlp(spec, rngs=nnx.Rngs(0))


def _vqa_batch():
    batch = random_batch(4, BATCH)
    rng = np.random.default_rng(5)
    return {
        "image": batch["image"],
        "question_ids": batch["text_ids"],
        "question_mask": batch["text_mask"],
        "answer_scores": rng.uniform(size=(BATCH, 5)).astype(np.float32),
    }


def _lm_batch():
    rng = np.random.default_rng(6)
    ids = rng.integers(1, VOCAB, size=(BATCH, 7)).astype(np.int32)
    return {"text_ids": ids, "text_mask": np.ones_like(ids, bool)}  # rows of equal length


def _lm_model():
    config = DecoderLMConfig(arch="gpt2", vocab_size=VOCAB, hidden_size=16, num_layers=2, num_heads=2,
                             intermediate_size=32, max_positions=8)  # fmt: skip
    return LanguageModel(DecoderLM(config, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("case", ["vqa", "lm"])
def test_micro_batch_averaging_equals_the_full_batch_for_row_means(case):
    model, batch = (_vqa_model(), _vqa_batch()) if case == "vqa" else (_lm_model(), _lm_batch())
    mesh = make_mesh()
    objective = make_objective({case: {}})
    full_metrics, full = _gradients(model, objective, batch, mesh)
    metrics, accumulated = _gradients(model, objective, batch, mesh, accum=2)
    assert_trees_close(accumulated, full)
    np.testing.assert_allclose(metrics["loss"], full_metrics["loss"], rtol=1e-5)


def test_the_trainer_with_grad_accum_follows_the_whole_batch_run(tiny_shapes_dir, tmp_path):
    """clip_shapes:tiny through the one trainer, on the pmap path (the mesh path's gradient
    function is tested above): with GradCache the losses of 3 steps are those of the run
    without accumulation."""
    overrides = [f"--config.data.data_dir={tiny_shapes_dir}", "--config.train.parallelism=pmap"]
    whole = recipe_losses("clip_shapes", overrides, str(tmp_path / "whole"), steps=3)
    accumulated = recipe_losses(
        "clip_shapes", [*overrides, "--config.train.grad_accum=2"], str(tmp_path / "accum"), steps=3
    )
    np.testing.assert_allclose(accumulated, whole, rtol=1e-4)
    assert len(set(whole.round(4))) > 1  # the parameters moved between steps
