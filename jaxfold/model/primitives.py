"""Building blocks shared by every AlphaFold module: Linear, LayerNorm, dropout.

Parameter names follow DeepMind's Haiku modules (`weights`/`bias` for Linear, `scale`/`offset` for
LayerNorm) so that the Flax tree maps 1:1 onto the official `.npz` keys.

Precision policy (DESIGN.md): parameters are stored in float32 and cast to the activation dtype at use;
LayerNorm statistics are always computed in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxfold.model.kernels import use_pallas

# Haiku's truncated normal draws from N(0, 1) truncated at +-2; this factor (the stddev of that truncated
# distribution) rescales so the *actual* stddev equals the requested one, as AlphaFold does.
TRUNCATED_NORMAL_STDDEV_FACTOR = np.asarray(0.87962566103423978, dtype=np.float32)

LAYER_NORM_EPS = 1e-5  # Haiku's LayerNorm default, used by every AlphaFold LayerNorm.


def final_init(global_config) -> str:
    """AlphaFold zero-initialises the last layer of every residual branch unless `zero_init` is off."""
    return "zeros" if global_config.zero_init else "linear"


def _variance_scaled_truncated_normal(scale: float, fan_in: int):
    stddev = float(np.sqrt(scale / fan_in) / TRUNCATED_NORMAL_STDDEV_FACTOR)

    def init(key, shape, dtype=jnp.float32):
        return stddev * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)

    return init


def linear_initializer(initializer: str, fan_in: int):
    """AlphaFold's named initialisers: 'linear' (scale 1), 'relu' (He, scale 2), 'zeros'/'gating'."""
    if initializer in ("zeros", "gating"):
        return nn.initializers.zeros
    scales = {"linear": 1.0, "relu": 2.0}
    if initializer not in scales:
        raise ValueError(f"unknown initializer {initializer!r}; expected one of linear, relu, zeros, gating")
    return _variance_scaled_truncated_normal(scales[initializer], fan_in)


class Linear(nn.Module):
    """Affine layer `x @ weights + bias` with AlphaFold's initialisers.

    Shapes: x `[..., *in_shape]` (the last `num_input_dims` axes are contracted), weights
    `[*in_shape, *out_shape]`, output `[..., *out_shape]`.

    Called with `x=None` it returns `(weights, bias)` instead, for callers that apply the layer inside a
    chunked loop (parameters must be created outside `lax.map`); then `num_input` must be given.
    """

    num_output: int | Sequence[int]
    initializer: str = "linear"
    use_bias: bool = True
    bias_init: float = 0.0
    num_input_dims: int = 1
    num_input: int | Sequence[int] | None = None

    @nn.compact
    def __call__(self, x: jax.Array | None = None):
        out_shape = (self.num_output,) if isinstance(self.num_output, int) else tuple(self.num_output)
        if x is not None:
            in_shape = tuple(x.shape[x.ndim - self.num_input_dims :])
        elif self.num_input is None:
            raise ValueError(f"Linear {self.name!r}: num_input is required when called without an input")
        else:
            in_shape = (self.num_input,) if isinstance(self.num_input, int) else tuple(self.num_input)
        fan_in = int(np.prod(in_shape))
        weights = self.param("weights", linear_initializer(self.initializer, fan_in), in_shape + out_shape)
        bias = None
        if self.use_bias:
            bias = self.param("bias", nn.initializers.constant(self.bias_init), out_shape)
        if x is None:
            return weights, bias
        return apply_linear(x, weights, bias, self.num_input_dims)


def apply_linear(x: jax.Array, weights: jax.Array, bias: jax.Array | None, num_input_dims: int = 1):
    """`x [..., *in] @ weights [*in, *out] + bias [*out]` in the dtype of `x`."""
    weights = weights.astype(x.dtype)
    out = jnp.tensordot(x, weights, axes=num_input_dims)
    if bias is not None:
        out = out + bias.astype(x.dtype)
    return out


def layer_norm(
    x: jax.Array, scale: jax.Array, offset: jax.Array, eps: float = LAYER_NORM_EPS, kernels: str = "xla"
) -> jax.Array:
    """LayerNorm over the last axis: `(x - mean) * rsqrt(var + eps) * scale + offset`.

    The one LayerNorm entry point of the model, so a fused kernel can be switched in by `kernels`
    ("auto" | "xla" | "pallas", see `jaxfold.model.kernels`).
    Statistics are computed in float32 whatever the input dtype; the result has the input dtype.
    Operation order mirrors Haiku's LayerNorm so float32 results agree bit-for-bit in practice.
    """
    if use_pallas(kernels):
        from pallas_kernels import layer_norm as fused  # noqa: PLC0415  (optional GPU kernel)

        return fused.layer_norm(x, scale, offset, eps=eps)
    dtype = x.dtype
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    variance = jnp.var(x32, axis=-1, keepdims=True)
    inv = scale.astype(jnp.float32) * jax.lax.rsqrt(variance + eps)
    return (inv * (x32 - mean) + offset.astype(jnp.float32)).astype(dtype)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis with learned `scale` and `offset` (Haiku names).

    Called with `x=None` it returns `(scale, offset)` instead, for callers that normalise slices inside a
    chunked loop with `layer_norm` (parameters must be created outside `lax.map`); then `num_channels`
    must be given.
    """

    kernels: str = "xla"
    num_channels: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array | None = None):
        if x is not None:
            channels = x.shape[-1]
        elif self.num_channels is None:
            raise ValueError(f"LayerNorm {self.name!r}: num_channels is required when called without an input")
        else:
            channels = self.num_channels
        scale = self.param("scale", nn.initializers.ones, (channels,))
        offset = self.param("offset", nn.initializers.zeros, (channels,))
        if x is None:
            return scale, offset
        return layer_norm(x, scale, offset, kernels=self.kernels)


def dropout(x: jax.Array, rate: float, rng: jax.Array | None, broadcast_dim: int | None = None) -> jax.Array:
    """Inverted dropout; with `broadcast_dim` the mask is shared along that axis (AlphaFold's shared
    dropout: one mask for every row (`per_row`, axis 0) or every column (`per_column`, axis 1))."""
    if rate == 0.0 or rng is None:
        return x
    shape = list(x.shape)
    if broadcast_dim is not None:
        shape[broadcast_dim] = 1
    keep_rate = 1.0 - rate
    keep = jax.random.bernoulli(rng, keep_rate, shape)
    return keep.astype(x.dtype) * x / jnp.asarray(keep_rate, x.dtype)
