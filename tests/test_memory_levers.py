"""Remat and scan over layers change memory and compile time, never values: every transformer
stack (ViT, BERT with cross-attention, the causal text tower, merged and co-attention fusion,
the decoder LM, Flamingo's resampler and gated blocks) gives the same outputs and gradients
under each policy, and the parameters keep one layout. Block remat under scan cuts the
compiled step's temporary memory of a 12-layer ViT-S at least 3x."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.test_flamingo import open_gates
from tests.train_helpers import assert_trees_close
from vlpjax.models.flamingo import Flamingo, FlamingoConfig
from vlpjax.models.fusion import CoAttentionFusion, FusionConfig, MergedAttentionFusion
from vlpjax.models.lm import DecoderLM, DecoderLMConfig
from vlpjax.models.text import BertConfig, BertEncoder, TextTransformer, TextTransformerConfig
from vlpjax.models.vlp import build_image_encoder

B, L, D = 2, 6, 16
# Every policy on the ViT (nothing_saveable is block's policy under JAX's name: checked below);
# two settings that between them cover remat and scan on the other stacks.
ALL_SETTINGS = [
    dict(remat="block", scan_layers=False),
    dict(remat="dots_saveable", scan_layers=False),
    dict(remat="block", scan_layers=True),
]
TWO_SETTINGS = [dict(remat="block", scan_layers=False), dict(remat="dots_saveable", scan_layers=True)]


def _inputs():
    keys = jax.random.split(jax.random.key(7), 4)
    ids = jax.random.randint(keys[0], (B, L), 1, 50)
    mask = jnp.arange(L)[None, :] < jnp.array([[L], [4]])  # right-padded, one short row
    image = jax.random.normal(keys[1], (B, 16, 16, 3))
    tokens = jax.random.normal(keys[2], (B, 5, D))
    return ids, mask, image, tokens


def _vit(**switches):
    spec = dict(kind="vit", variant="x/8", width=D, depth=3, mlp_dim=32, num_heads=2, image_size=16, pool="map")
    model = build_image_encoder({**spec, **switches}, rngs=nnx.Rngs(0))
    return model, lambda m: m(_inputs()[2]).pooled


def _bert(**switches):
    config = BertConfig(
        vocab_size=50, hidden_size=D, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=L, cross_attention_from=2, context_dim=D, **switches,
    )  # fmt: skip
    ids, mask, _, tokens = _inputs()
    return BertEncoder(config, rngs=nnx.Rngs(0)), lambda m: m(ids, mask, context=tokens, context_mask=None)


def _causal(**switches):
    config = TextTransformerConfig(vocab_size=50, width=D, depth=3, num_heads=2, mlp_dim=32, max_len=L, **switches)
    ids, mask, _, _ = _inputs()
    return TextTransformer(config, rngs=nnx.Rngs(0)), lambda m: m.encode(ids, mask).pooled


def _fusion(cls):
    def make(**switches):
        config = FusionConfig(width=D, depth=3, num_heads=2, mlp_dim=32, **switches)
        _, mask, _, tokens = _inputs()
        text = jax.random.normal(jax.random.key(3), (B, L, D))
        image_mask = jnp.ones(tokens.shape[:2], bool)
        return cls(config, rngs=nnx.Rngs(0)), lambda m: m(text, mask, tokens, image_mask).text

    return make


def _lm_config(**switches):
    return DecoderLMConfig(
        arch="llama", vocab_size=50, hidden_size=D, num_layers=3, num_heads=4, num_kv_heads=2, intermediate_size=32,
        **switches,
    )  # fmt: skip


def _lm(**switches):
    ids, mask, _, _ = _inputs()
    return DecoderLM(_lm_config(**switches), rngs=nnx.Rngs(0)), lambda m: m(ids, mask)


def _flamingo(**switches):
    lm = DecoderLM(_lm_config(**switches), rngs=nnx.Rngs(0))
    vision, _ = _vit(**switches)
    config = FlamingoConfig(num_latents=2, resampler_depth=2, resampler_heads=2, cross_heads=2)
    model = Flamingo(vision, lm, config, rngs=nnx.Rngs(1))
    open_gates(model)  # closed, the adapters contribute nothing and have no gradient to compare
    ids, mask, image, _ = _inputs()
    ids = ids.at[:, 1].set(model.image_id)  # one image per row, after the first token
    return model, lambda m: m.logits(ids, mask, m.encode_media(image[:, None]))


STACKS = {
    "vit": _vit,
    "bert_cross": _bert,
    "causal_text": _causal,
    "merged": _fusion(MergedAttentionFusion),
    "co_attention": _fusion(CoAttentionFusion),
    "decoder_lm": _lm,
    "flamingo": _flamingo,
}


def _values_and_grads(make, **switches):
    model, run = make(**switches)
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(p):
        out = run(nnx.merge(graphdef, p))
        return jnp.mean(jnp.sin(out.astype(jnp.float32))), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return out, grads, params


@pytest.mark.parametrize("stack", list(STACKS))
def test_remat_and_scan_keep_outputs_gradients_and_layout(stack):
    make = STACKS[stack]
    out, grads, params = _values_and_grads(make)
    for switches in ALL_SETTINGS if stack == "vit" else TWO_SETTINGS:
        out2, grads2, params2 = _values_and_grads(make, **switches)
        # One layout: the same parameter paths, shapes and initial values.
        assert jax.tree.structure(params2) == jax.tree.structure(params)
        for a, b in zip(jax.tree.leaves(params2), jax.tree.leaves(params), strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(out2, out, atol=1e-5, err_msg=str(switches))
        assert_trees_close(grads2, grads, rtol=1e-5)


def test_flamingo_gradients_reach_the_adapters():
    """The comparison above means something: the opened gates give the adapters gradients."""
    _, grads, _ = _values_and_grads(_flamingo)
    resampler = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(grads["resampler"]))
    assert resampler > 1e-6


def test_nothing_saveable_is_the_block_policy():
    from vlpjax.models.stack import REMAT_POLICIES

    assert REMAT_POLICIES["nothing_saveable"] is REMAT_POLICIES["block"] is jax.checkpoint_policies.nothing_saveable


def test_scan_needs_layers_of_one_structure():
    from vlpjax.models.stack import run_stack

    a, _ = _vit()
    b, _ = _causal()
    with pytest.raises(ValueError, match="one structure"):
        run_stack([a.blocks[0], b.blocks[0]], jnp.zeros((1, 2, D)), lambda layer, x: layer(x), scan=True)


def _vit_s_step_temp_bytes(**switches) -> int:
    """Temporary memory of the compiled gradient of a 12-layer ViT-S/16 on 112px images."""
    spec = dict(kind="vit", variant="S/16", image_size=112, pool="gap", **switches)
    model = nnx.eval_shape(lambda: build_image_encoder(spec, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(model)

    def loss(p, x):
        return jnp.mean(nnx.merge(graphdef, p)(x).pooled ** 2)

    images = jax.ShapeDtypeStruct((64, 112, 112, 3), jnp.float32)
    compiled = jax.jit(jax.grad(loss)).lower(params, images).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_block_remat_cuts_the_step_memory_of_a_vit_s_3x():
    none = _vit_s_step_temp_bytes(scan_layers=True)
    block = _vit_s_step_temp_bytes(scan_layers=True, remat="block")
    assert none >= 3 * block, (none, block)


def test_config_fields_reach_every_layer():
    model, _ = _bert(remat="block", scan_layers=True, attention="xla")
    assert dataclasses.asdict(model.config)["remat"] == "block"
    assert all(layer.attn.kernel_name == "xla" for layer in model.layers)


def test_bfloat16_runs_the_matmuls_in_bfloat16_and_keeps_parameters_in_float32():
    model, run = _vit(remat="none")
    bf16 = build_image_encoder(
        dict(kind="vit", variant="x/8", width=D, depth=3, mlp_dim=32, num_heads=2, image_size=16, pool="map",
             dtype="bfloat16"),
        rngs=nnx.Rngs(0),
    )  # fmt: skip
    assert {x.dtype for x in jax.tree.leaves(nnx.state(bf16, nnx.Param))} == {jnp.dtype(jnp.float32)}
    image = _inputs()[2]
    hlo = jax.jit(lambda m: m(image).pooled).lower(bf16).as_text()
    # "(tensor<...xbf16>, tensor<...xbf16>) -> tensor<...>": the operand types of every matmul.
    operands = [line.rsplit(" : (", 1)[1].split(") ->")[0] for line in hlo.splitlines() if "dot_general" in line]
    assert len(operands) >= 10 and all(o.count("xbf16>") == 2 for o in operands), operands
    # The attention logits come out in float32 (softmax statistics), from bf16 operands.
    assert any(line.endswith("xf32>") for line in hlo.splitlines() if "dot_general" in line)
    fp32_hlo = jax.jit(lambda m: m(image).pooled).lower(model).as_text()
    assert not any("bf16" in line for line in fp32_hlo.splitlines() if "dot_general" in line)
