"""Gated multi-head attention (with pair bias and mask) and AlphaFold's global column attention.

Parameter names and shapes follow AlphaFold's `Attention`/`GlobalAttention` Haiku modules:
`query_w [c_in, H, c]`, `key_w`, `value_w`, `gating_w [c_in, H, c_v]`, `gating_b [H, c_v]`,
`output_w [H, c_v, c_out]`, `output_b [c_out]`.

Masks use AlphaFold's additive `1e9 * (mask - 1)` bias: a fully masked row then gets uniform weights, exactly
as in DeepMind's model (the -1e9 swamps the logits in float32). Also here: the per-head bias projected from the
pair (`pair_bias`, `pair_bias_in_chunks`) and `attention_for`, the attention of a sub-module's config.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxfold.model.chunking import chunked
from jaxfold.model.kernels import use_pallas
from jaxfold.model.primitives import layer_norm

glorot_uniform = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=0, out_axis=(1, 2))


def mask_to_bias(mask: jax.Array) -> jax.Array:
    """Key mask `[..., K]` (1 = attend) -> additive logit bias with AlphaFold's 1e9 convention."""
    return 1e9 * (mask - 1.0)


def attention_core(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array,
    nonbatched_bias: jax.Array | None = None,
    kernels: str = "xla",
) -> jax.Array:
    """softmax(q k^T + bias + nonbatched_bias) v, per head.

    The one attention entry point of the model, so a fused kernel can be switched in by `kernels`
    ("auto" | "xla" | "pallas", see `jaxfold.model.kernels`).
    q: `[B, Q, H, C]`, already scaled by C**-0.5; k: `[B, K, H, C]`; v: `[B, K, H, Cv]`;
    bias: broadcastable to `[B, H, Q, K]` (the mask bias); nonbatched_bias: `[H, Q, K]` shared by all B
    (the pair bias). Returns `[B, Q, H, Cv]` in the dtype of v. Softmax runs in float32.
    """
    if use_pallas(kernels):
        from pallas_kernels import attention as fused  # noqa: PLC0415  (optional GPU kernel)

        return fused.attention(q, k, v, bias, nonbatched_bias)
    logits = jnp.einsum("bqhc,bkhc->bhqk", q, k).astype(jnp.float32) + bias
    if nonbatched_bias is not None:
        logits = logits + nonbatched_bias[None].astype(jnp.float32)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhc->bqhc", weights, v)


def gating_and_output_params(
    module: nn.Module, c_q: int, num_head: int, value_dim: int, output_dim: int, gating: bool, zero_init: bool
):
    """The gate (`gating_w [c_q, H, c_v]` zeros, `gating_b [H, c_v]` ones: gates start open at sigmoid(1))
    and output projection (`output_w [H, c_v, c_out]`, zero-initialised under `zero_init`) of both
    attention variants. Gating params are None when `gating` is off."""
    gating_w = gating_b = None
    if gating:
        gating_w = module.param("gating_w", nn.initializers.zeros, (c_q, num_head, value_dim))
        gating_b = module.param("gating_b", nn.initializers.ones, (num_head, value_dim))
    out_init = nn.initializers.zeros if zero_init else glorot_uniform
    output_w = module.param("output_w", out_init, (num_head, value_dim, output_dim))
    output_b = module.param("output_b", nn.initializers.zeros, (output_dim,))
    return gating_w, gating_b, output_w, output_b


class Attention(nn.Module):
    """Multi-head attention from `q_data` to `m_data` with optional sigmoid gating.

    q_data `[B, Q, c_q]`, m_data `[B, K, c_m]`, bias broadcastable to `[B, H, Q, K]`,
    nonbatched_bias `[H, Q, K]` -> `[B, Q, output_dim]`.
    key_dim / value_dim are the totals over heads (AlphaFold's convention); default: input width.
    `chunk_size` > 0 processes that many of the B rows at a time.
    """

    num_head: int
    output_dim: int
    gating: bool = True
    key_dim: int | None = None
    value_dim: int | None = None
    zero_init: bool = True
    chunk_size: int = 0
    kernels: str = "xla"

    @nn.compact
    def __call__(self, q_data, m_data, bias, nonbatched_bias=None):
        c_q, c_m = q_data.shape[-1], m_data.shape[-1]
        key_dim = (self.key_dim or c_q) // self.num_head
        value_dim = (self.value_dim or c_m) // self.num_head
        h = self.num_head
        query_w = self.param("query_w", glorot_uniform, (c_q, h, key_dim))
        key_w = self.param("key_w", glorot_uniform, (c_m, h, key_dim))
        value_w = self.param("value_w", glorot_uniform, (c_m, h, value_dim))
        gating_w, gating_b, output_w, output_b = gating_and_output_params(
            self, c_q, h, value_dim, self.output_dim, self.gating, self.zero_init
        )
        dtype = q_data.dtype

        def rows(q_data, m_data, bias):
            q = jnp.einsum("bqa,ahc->bqhc", q_data, query_w.astype(dtype)) * key_dim ** (-0.5)
            k = jnp.einsum("bka,ahc->bkhc", m_data, key_w.astype(dtype))
            v = jnp.einsum("bka,ahc->bkhc", m_data, value_w.astype(dtype))
            avg = attention_core(q, k, v, bias, nonbatched_bias, kernels=self.kernels)
            if self.gating:
                gate = jnp.einsum("bqc,chv->bqhv", q_data, gating_w.astype(dtype)) + gating_b.astype(dtype)
                avg = avg * jax.nn.sigmoid(gate)
            return jnp.einsum("bqhc,hco->bqo", avg, output_w.astype(dtype)) + output_b.astype(dtype)

        batch = q_data.shape[0]
        bias_axis = 0 if bias.ndim == 4 and bias.shape[0] == batch and batch > 1 else None
        return chunked(rows, self.chunk_size, batch_axes=(0, 0, bias_axis))(q_data, m_data, bias)


def mask_mean(mask: jax.Array, value: jax.Array, axis: int, eps: float = 1e-10) -> jax.Array:
    """Masked mean along `axis`, AlphaFold's `utils.mask_mean` for a mask with a trailing size-1 channel."""
    return jnp.sum(mask * value, axis=axis) / (jnp.sum(mask, axis=axis) + eps)


class GlobalAttention(nn.Module):
    """AlphaFold's global attention: one averaged query per head, single-head keys and values.

    q_data `[B, Q, c]`, m_data `[B, K, c]`, q_mask `[B, Q, 1]` -> `[B, Q, output_dim]`.
    """

    num_head: int
    output_dim: int
    gating: bool = True
    key_dim: int | None = None
    value_dim: int | None = None
    zero_init: bool = True
    chunk_size: int = 0

    @nn.compact
    def __call__(self, q_data, m_data, q_mask):
        c_q, c_m = q_data.shape[-1], m_data.shape[-1]
        key_dim = (self.key_dim or c_q) // self.num_head
        value_dim = (self.value_dim or c_m) // self.num_head
        h = self.num_head
        query_w = self.param("query_w", glorot_uniform, (c_q, h, key_dim))
        key_w = self.param("key_w", nn.initializers.glorot_uniform(), (c_m, key_dim))
        value_w = self.param("value_w", nn.initializers.glorot_uniform(), (c_m, value_dim))
        gating_w, gating_b, output_w, output_b = gating_and_output_params(
            self, c_q, h, value_dim, self.output_dim, self.gating, self.zero_init
        )
        dtype = q_data.dtype

        def rows(q_data, m_data, q_mask):
            v = jnp.einsum("bka,ac->bkc", m_data, value_w.astype(dtype))
            q_avg = mask_mean(q_mask, q_data, axis=1)
            q = jnp.einsum("ba,ahc->bhc", q_avg, query_w.astype(dtype)) * key_dim ** (-0.5)
            k = jnp.einsum("bka,ac->bkc", m_data, key_w.astype(dtype))
            bias = mask_to_bias(q_mask[:, None, :, 0])
            logits = jnp.einsum("bhc,bkc->bhk", q, k).astype(jnp.float32) + bias
            weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
            avg = jnp.einsum("bhk,bkc->bhc", weights, v)
            if self.gating:
                gate = jnp.einsum("bqc,chv->bqhv", q_data, gating_w.astype(dtype)) + gating_b.astype(dtype)
                avg = avg[:, None] * jax.nn.sigmoid(gate)
                return jnp.einsum("bqhc,hco->bqo", avg, output_w.astype(dtype)) + output_b.astype(dtype)
            out = jnp.einsum("bhc,hco->bo", avg, output_w.astype(dtype)) + output_b.astype(dtype)
            return out[:, None]

        return chunked(rows, self.chunk_size)(q_data, m_data, q_mask)


def pair_bias(module: nn.Module, pair_act: jax.Array, num_head: int, kernels: str) -> jax.Array:
    """Per-head attention bias from the pair representation: LayerNorm then a linear map.

    pair_act `[N, N, c_z]` -> `[H, N, N]`. Creates `feat_2d_norm`-style params in the caller's scope, so it
    must be called from inside the caller's compact method; the norm's name differs per caller.
    """
    c_z = pair_act.shape[-1]
    weights = module.param("feat_2d_weights", nn.initializers.normal(1.0 / np.sqrt(c_z)), (c_z, num_head))
    return jnp.einsum("qkc,ch->hqk", pair_act, weights.astype(pair_act.dtype))


def pair_bias_in_chunks(
    pair_act: jax.Array, norm_params: dict, feat_2d_weights: jax.Array, chunk_size: int, kernels: str
) -> jax.Array:
    """`pair_bias` of the layer-normed pair from the parameters, `chunk_size` pair rows at a time, so no
    normalised copy of the whole pair exists: pair_act `[N, N, c_z]` -> `[H, N, N]` (in-place inference)."""

    def rows(pair_rows):
        normed = layer_norm(pair_rows, norm_params["scale"], norm_params["offset"], kernels=kernels)
        return jnp.einsum("qkc,ch->hqk", normed, feat_2d_weights.astype(normed.dtype))

    return chunked(rows, chunk_size, batch_axes=(0,), out_axis=1)(pair_act)


def attention_for(config, global_config, output_dim: int) -> Attention:
    return Attention(
        num_head=config.num_head,
        output_dim=output_dim,
        gating=config.gating,
        key_dim=config.get("key_dim"),
        value_dim=config.get("value_dim"),
        zero_init=global_config.zero_init,
        chunk_size=global_config.chunk_size,
        kernels=global_config.kernels,
        name="attention",
    )
