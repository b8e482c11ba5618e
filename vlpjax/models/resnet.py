"""ResNet grid encoder (the "CNN grid" image family: Pixel-BERT, early CLIP RN50 style).

GroupNorm replaces BatchNorm, as in BiT: no batch statistics to synchronise across devices,
and the forward pass is a pure function of the parameters.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from vlpjax.models.layers import Encoded, with_axes

# layout name -> (block kind, blocks per stage)
RESNET_LAYOUTS = {
    "18": ("basic", (2, 2, 2, 2)),
    "34": ("basic", (3, 4, 6, 3)),
    "50": ("bottleneck", (3, 4, 6, 3)),
    "101": ("bottleneck", (3, 4, 23, 3)),
}


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    layout: str = "50"
    width: int = 64  # channels of the stem; stage s has width * 2**s (times 4 for bottlenecks)
    groups: int = 32
    # The stages run, 1..4: a detector reads a finer map (stride 4 * 2**(num_stages - 1)).
    num_stages: int = 4
    dtype: str = "float32"

    def __post_init__(self):
        if self.layout not in RESNET_LAYOUTS:
            raise ValueError(f"ResNet layout must be one of {sorted(RESNET_LAYOUTS)}, got {self.layout!r}")
        if not 1 <= self.num_stages <= 4:
            raise ValueError(f"ResNet num_stages must be 1..4, got {self.num_stages}")

    @property
    def out_channels(self) -> int:
        kind, _ = RESNET_LAYOUTS[self.layout]
        return self.width * 2 ** (self.num_stages - 1) * (4 if kind == "bottleneck" else 1)

    @property
    def stride(self) -> int:
        """Input pixels per cell of the output map: the stem's 4, then 2 per later stage."""
        return 4 * 2 ** (self.num_stages - 1)


def _conv(cin: int, cout: int, k: int, stride: int, dtype, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(
        cin,
        cout,
        kernel_size=(k, k),
        strides=(stride, stride),
        padding=((k // 2, k // 2),) * 2,  # a tuple: the module stays hashable (jit static)
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=with_axes(nnx.initializers.he_normal(), (None, None, "conv_in", "conv_out")),
        rngs=rngs,
    )


def _norm(channels: int, groups: int, rngs: nnx.Rngs) -> nnx.GroupNorm:
    return nnx.GroupNorm(
        channels,
        num_groups=min(groups, channels),
        param_dtype=jnp.float32,
        scale_init=with_axes(nnx.initializers.ones_init(), ("norm",)),
        bias_init=with_axes(nnx.initializers.zeros_init(), ("norm",)),
        rngs=rngs,
    )


class BasicBlock(nnx.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, groups: int, dtype, rngs: nnx.Rngs):
        cout = width * self.expansion
        self.conv1, self.norm1 = _conv(cin, width, 3, stride, dtype, rngs), _norm(width, groups, rngs)
        self.conv2, self.norm2 = _conv(width, cout, 3, 1, dtype, rngs), _norm(cout, groups, rngs)
        self.project = stride != 1 or cin != cout
        if self.project:
            self.proj_conv, self.proj_norm = _conv(cin, cout, 1, stride, dtype, rngs), _norm(cout, groups, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        residual = self.proj_norm(self.proj_conv(x)) if self.project else x
        y = jax.nn.relu(self.norm1(self.conv1(x)))
        return jax.nn.relu(residual + self.norm2(self.conv2(y)))


class BottleneckBlock(nnx.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, groups: int, dtype, rngs: nnx.Rngs):
        cout = width * self.expansion
        self.conv1, self.norm1 = _conv(cin, width, 1, 1, dtype, rngs), _norm(width, groups, rngs)
        self.conv2, self.norm2 = _conv(width, width, 3, stride, dtype, rngs), _norm(width, groups, rngs)
        self.conv3, self.norm3 = _conv(width, cout, 1, 1, dtype, rngs), _norm(cout, groups, rngs)
        self.project = stride != 1 or cin != cout
        if self.project:
            self.proj_conv, self.proj_norm = _conv(cin, cout, 1, stride, dtype, rngs), _norm(cout, groups, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        residual = self.proj_norm(self.proj_conv(x)) if self.project else x
        y = jax.nn.relu(self.norm1(self.conv1(x)))
        y = jax.nn.relu(self.norm2(self.conv2(y)))
        return jax.nn.relu(residual + self.norm3(self.conv3(y)))


class ResNet(nnx.Module):
    """Returns the last stage's feature map as grid tokens [B, h*w, C] and their mean as pooled."""

    input_keys = ("image",)

    def __init__(self, config: ResNetConfig, *, rngs: nnx.Rngs):
        c = self.config = config
        dtype = jnp.dtype(c.dtype)
        kind, stages = RESNET_LAYOUTS[c.layout]
        block_cls = BasicBlock if kind == "basic" else BottleneckBlock
        self.out_dim = c.out_channels
        self.stem_conv = _conv(3, c.width, 7, 2, dtype, rngs)
        self.stem_norm = _norm(c.width, c.groups, rngs)
        blocks, cin = [], c.width
        for stage, count in enumerate(stages[: c.num_stages]):
            width = c.width * 2**stage
            for i in range(count):
                stride = 2 if (i == 0 and stage > 0) else 1
                blocks.append(block_cls(cin, width, stride, c.groups, dtype, rngs))
                cin = width * block_cls.expansion
        self.blocks = nnx.List(blocks)

    def feature_map(self, image: jax.Array) -> jax.Array:
        """[B, H / stride, W / stride, out_dim]: the last stage's output."""
        x = image.astype(jnp.dtype(self.config.dtype))
        x = jax.nn.relu(self.stem_norm(self.stem_conv(x)))
        x = nnx.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for block in self.blocks:
            x = block(x)
        return x

    def __call__(self, image: jax.Array) -> Encoded:
        x = self.feature_map(image)
        b, h, w, ch = x.shape
        tokens = x.reshape(b, h * w, ch)
        return Encoded(tokens=tokens, pooled=jnp.mean(tokens, axis=1), mask=jnp.ones((b, h * w), dtype=bool))
