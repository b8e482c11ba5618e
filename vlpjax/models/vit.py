"""Vision Transformer: patch embedding, position embedding, pre-LN blocks, cls | gap | map pooling.

Variants are named as in the ViT papers, `"<width>/<patch>"` (e.g. "B/16"); any field can be
overridden, and an unknown width name works when width, depth, mlp_dim and num_heads are all given.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from vlpjax.models.layers import Encoded, MAPHead, PreLNBlock, layer_norm, sincos_2d, with_axes
from vlpjax.models.stack import run_stack

# name -> (width, depth, mlp_dim, num_heads)
VIT_WIDTHS = {
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "H": (1280, 32, 5120, 16),
}
POOLINGS = ("cls", "gap", "map")
PIXEL_STATS = (0.5, 0.5, 0.5)  # vlpjax's input: pixels / 127.5 - 1
POSEMBS = ("learn", "sincos2d")


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    patch: int
    image_size: int = 224
    posemb: str = "learn"
    pool: str = "cls"
    act: str = "gelu"
    eps: float = 1e-6  # every LayerNorm of the tower
    ln_pre: bool = False  # CLIP: a LayerNorm on the embedded tokens, before the first block
    patch_bias: bool = True  # CLIP's patch embedding has no bias
    cls_posemb: bool = False  # CLIP: the class token has a position embedding of its own
    # The pixel normalisation the weights were trained with, (pixels / 255 - mean) / std. vlpjax
    # feeds mean = std = 0.5 (pixels / 127.5 - 1); other values (CLIP's) are converted to first.
    pixel_mean: tuple = PIXEL_STATS
    pixel_std: tuple = PIXEL_STATS
    dtype: str = "float32"
    attention: str = "xla"  # the scale switches: see vlpjax.models.attention and .stack
    remat: str = "none"
    scan_layers: bool = False

    def __post_init__(self):
        if self.pool not in POOLINGS:
            raise ValueError(f"ViT pool must be one of {POOLINGS}, got {self.pool!r}")
        if self.posemb not in POSEMBS:
            raise ValueError(f"ViT posemb must be one of {POSEMBS}, got {self.posemb!r}")
        if self.image_size % self.patch:
            raise ValueError(f"image_size {self.image_size} is not a multiple of the patch size {self.patch}")
        if self.cls_posemb and (self.pool != "cls" or self.posemb != "learn"):
            raise ValueError("ViT cls_posemb=True needs pool='cls' and posemb='learn'")
        for name in ("pixel_mean", "pixel_std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3:
                raise ValueError(f"ViT {name} needs 3 values (R, G, B), got {value}")
            object.__setattr__(self, name, value)  # a tuple whatever the config gave

    @property
    def grid(self) -> int:
        return self.image_size // self.patch


def vit_config(variant: str, **overrides) -> ViTConfig:
    """Decode "B/16" (plus overrides) into a ViTConfig."""
    try:
        name, patch = variant.split("/")
        patch = int(patch)
    except ValueError:
        raise ValueError(f"ViT variant must look like 'B/16', got {variant!r}") from None
    fields = dict(patch=patch)
    if name in VIT_WIDTHS:
        fields.update(zip(("width", "depth", "mlp_dim", "num_heads"), VIT_WIDTHS[name], strict=False))
    fields.update(overrides)
    missing = {"width", "depth", "mlp_dim", "num_heads"} - fields.keys()
    if missing:
        raise ValueError(
            f"ViT variant {variant!r}: width name {name!r} is not one of {sorted(VIT_WIDTHS)}, "
            f"so these must be given explicitly: {sorted(missing)}"
        )
    return ViTConfig(**fields)


class PatchEmbed(nnx.Module):
    """A stride-P, P x P convolution written as one matmul over flattened patches.

    Same parameters as the convolution (kernel [P, P, 3, D]); the matmul form is much faster
    on CPU, where XLA's strided-convolution gradients are slow.
    """

    def __init__(self, patch: int, width: int, *, use_bias: bool = True, dtype, rngs: nnx.Rngs):
        self.patch, self.dtype, self.use_bias = patch, dtype, use_bias
        init = with_axes(nnx.initializers.lecun_normal(in_axis=(0, 1, 2), out_axis=3), (None, None, None, "embed"))
        self.kernel = nnx.Param(init(rngs.params(), (patch, patch, 3, width)))
        bias_init = with_axes(nnx.initializers.zeros_init(), ("embed",))
        self.bias = nnx.Param(bias_init(rngs.params(), (width,))) if use_bias else None

    def __call__(self, image: jax.Array) -> jax.Array:
        b, h, w, ch = image.shape
        p = self.patch
        if h % p or w % p:
            raise ValueError(f"image of {h}x{w} pixels does not tile into {p}x{p} patches")
        patches = (
            image.reshape(b, h // p, p, w // p, p, ch)
            .transpose(0, 1, 3, 2, 4, 5)
            .reshape(b, h // p, w // p, p * p * ch)
        )
        kernel = self.kernel[...].reshape(p * p * ch, -1).astype(self.dtype)
        out = patches.astype(self.dtype) @ kernel
        return out + self.bias[...].astype(self.dtype) if self.use_bias else out


class ViT(nnx.Module):
    input_keys = ("image",)

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs):
        c = self.config = config
        dtype = jnp.dtype(c.dtype)
        self.out_dim = c.width
        self.patch_embed = PatchEmbed(c.patch, c.width, use_bias=c.patch_bias, dtype=dtype, rngs=rngs)
        if c.posemb == "learn":
            init = with_axes(nnx.initializers.normal(0.02), (None, None, "embed"))
            self.pos_embed = nnx.Param(init(rngs.params(), (1, c.grid * c.grid + c.cls_posemb, c.width)))
        if c.pool == "cls":
            self.cls_token = nnx.Param(
                with_axes(nnx.initializers.zeros_init(), (None, None, "embed"))(rngs.params(), (1, 1, c.width))
            )
        if c.ln_pre:
            self.ln_pre = layer_norm(c.width, eps=c.eps, dtype=dtype, rngs=rngs)
        self.blocks = nnx.List(
            [
                PreLNBlock(
                    c.width, c.num_heads, c.mlp_dim, act=c.act, eps=c.eps, dtype=dtype, attention=c.attention, rngs=rngs
                )
                for _ in range(c.depth)
            ]
        )
        self.ln_final = layer_norm(c.width, eps=c.eps, rngs=rngs)
        if c.pool == "map":
            self.map_head = MAPHead(
                c.width, c.num_heads, c.mlp_dim, act=c.act, eps=c.eps, dtype=dtype, attention=c.attention, rngs=rngs
            )

    def _position_embedding(self, grid_h: int, grid_w: int):
        c = self.config
        if c.posemb == "sincos2d":
            return jnp.asarray(sincos_2d(grid_h, grid_w, c.width))[None]
        if grid_h * grid_w + c.cls_posemb != self.pos_embed.shape[1]:
            raise ValueError(
                f"ViT was built for {c.image_size}px images ({c.grid}x{c.grid} patches) "
                f"but got a {grid_h}x{grid_w} patch grid"
            )
        return self.pos_embed[...]

    def _renormalised(self, image: jax.Array) -> jax.Array:
        """vlpjax's [-1, 1] pixels in the normalisation the weights expect (CLIP's mean and std)."""
        c = self.config
        if c.pixel_mean == PIXEL_STATS and c.pixel_std == PIXEL_STATS:
            return image
        mean, std = jnp.asarray(c.pixel_mean, jnp.float32), jnp.asarray(c.pixel_std, jnp.float32)
        return ((image.astype(jnp.float32) + 1.0) / 2.0 - mean) / std

    def __call__(self, image: jax.Array) -> Encoded:
        """image [B,H,W,3] float -> Encoded(tokens [B,T,D], pooled [B,D], mask [B,T])."""
        c = self.config
        x = self.patch_embed(self._renormalised(image).astype(jnp.dtype(c.dtype)))
        b, gh, gw, d = x.shape
        x = x.reshape(b, gh * gw, d)
        if c.pool == "cls":  # CLIP embeds the class token's position too (cls_posemb)
            if not c.cls_posemb:
                x = x + self._position_embedding(gh, gw).astype(x.dtype)
            x = jnp.concatenate([jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (b, 1, d)), x], axis=1)
            if c.cls_posemb:
                x = x + self._position_embedding(gh, gw).astype(x.dtype)
        else:
            x = x + self._position_embedding(gh, gw).astype(x.dtype)
        if c.ln_pre:
            x = self.ln_pre(x)
        x = run_stack(self.blocks, x, lambda block, x: block(x), remat=c.remat, scan=c.scan_layers)
        x = self.ln_final(x)
        mask = jnp.ones(x.shape[:2], dtype=bool)
        if c.pool == "cls":
            pooled = x[:, 0]
        elif c.pool == "gap":
            pooled = jnp.mean(x, axis=1)
        else:
            pooled = self.map_head(x)
        return Encoded(tokens=x, pooled=pooled, mask=mask)
