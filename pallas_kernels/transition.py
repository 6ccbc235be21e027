"""Fused AlphaFold transition (LayerNorm -> Linear c->h -> ReLU -> Linear h->c) in Pallas/Triton.

`transition(x, scale, offset, w1, b1, w2, b2)` = `relu(LN(x) @ w1 + b1) @ w2 + b2` over the last axis of x
`[..., c]`, w1 `[c, h]`, w2 `[h, c]` (h = 4c in AlphaFold), the same math as `jaxfold.model.transition`.

Why: XLA runs this as LN (fused), GEMM, bias+ReLU (fused into the GEMM epilogue), GEMM -- the 4x-wide
hidden activation goes to HBM and back (8 of the ~10 tensor-sized passes for the pair transition). Here a
program owns `block_rows` rows: LayerNorm in fp32 in registers, then the hidden layer is produced
`block_h` columns at a time and immediately contracted with the matching rows of w2 into an fp32
`[block_rows, c]` accumulator, so the hidden activation never reaches memory. Traffic: read x, write y.
Backward (custom VJP): XLA, recomputing from x (jax.vjp of the jnp reference); this is a forward-pass
kernel (inference, and the forward + remat recomputation of training), kept only if
`bench/triangle_multiplication.py`'s transition rows show it winning.
Ragged rows and channel counts that are not powers of two are handled by masked loads/stores.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels import _compat as C_
from pallas_kernels import _vma as V_

LAYER_NORM_EPS = 1e-5


def transition_reference(x, scale, offset, w1, b1, w2, b2, eps: float = LAYER_NORM_EPS):
    """Pure jnp: `jaxfold.model.transition.Transition`'s math (LN stats fp32, matmuls in x's dtype)."""
    dtype = x.dtype
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.var(x32, axis=-1, keepdims=True)
    y = (scale.astype(jnp.float32) * jax.lax.rsqrt(var + eps) * (x32 - mean) + offset.astype(jnp.float32)).astype(dtype)
    h = jax.nn.relu(jnp.tensordot(y, w1.astype(dtype), axes=1) + b1.astype(dtype))
    return jnp.tensordot(h, w2.astype(dtype), axes=1) + b2.astype(dtype)


@dataclasses.dataclass(frozen=True)
class _Cfg:
    rows: int
    c: int
    h: int
    cp: int
    hp: int
    block_rows: int
    block_h: int
    eps: float
    num_warps: int
    num_stages: int
    precision: object
    interpret: bool


def _kernel(x_ref, scale_ref, offset_ref, w1_ref, b1_ref, w2_ref, b2_ref, o_ref, *, cfg: _Cfg):
    br, bh = cfg.block_rows, cfg.block_h
    r0 = pl.program_id(0) * br
    rows_ok = None if cfg.rows % br == 0 else (r0 + jnp.arange(br) < cfg.rows)
    c_ok = None if cfg.c == cfg.cp else jnp.arange(cfg.cp) < cfg.c

    def mask2(a, b, shape):
        if a is None and b is None:
            return None
        a = a[:, None] if a is not None else jnp.ones((shape[0], 1), jnp.bool_)
        b = b[None, :] if b is not None else jnp.ones((1, shape[1]), jnp.bool_)
        return jnp.broadcast_to(a & b, shape)

    def load(ref, m):
        return ref[...] if m is None else C_.load(ref, mask=m, other=0.0)

    x_mask = mask2(rows_ok, c_ok, (br, cfg.cp))
    x = load(x_ref, x_mask).astype(jnp.float32)
    mean = jnp.sum(x, axis=1, keepdims=True) / cfg.c
    xc = x - mean
    if c_ok is not None:
        xc = jnp.where(c_ok[None, :], xc, 0.0)
    var = jnp.sum(xc * xc, axis=1, keepdims=True) / cfg.c
    scale = load(scale_ref, c_ok).astype(jnp.float32)
    offset = load(offset_ref, c_ok).astype(jnp.float32)
    y = ((scale[None, :] * jax.lax.rsqrt(var + cfg.eps)) * xc + offset[None, :]).astype(o_ref.dtype)

    def body(t, acc):
        h0 = pl.multiple_of(t * bh, bh)
        hs = pl.ds(h0, bh)
        h_ok = None if cfg.h % bh == 0 else (h0 + jnp.arange(bh) < cfg.h)
        w1 = load(w1_ref.at[:, hs], mask2(c_ok, h_ok, (cfg.cp, bh)))
        b1 = load(b1_ref.at[hs], h_ok).astype(jnp.float32)
        hid = jnp.maximum(C_.dot(y, w1, precision=cfg.precision) + b1[None, :], 0.0).astype(o_ref.dtype)
        w2 = load(w2_ref.at[hs, :], mask2(h_ok, c_ok, (bh, cfg.cp)))
        return acc + C_.dot(hid, w2, precision=cfg.precision)

    acc = jax.lax.fori_loop(0, C_.cdiv(cfg.h, bh), body, jnp.zeros((br, cfg.cp), jnp.float32))
    out = acc + load(b2_ref, c_ok).astype(jnp.float32)[None, :]
    C_.store(o_ref, out.astype(o_ref.dtype), mask=x_mask)


def _forward(x2d, weights, cfg: _Cfg):
    scale, offset, w1, b1, w2, b2 = weights
    hr = -(-cfg.h // cfg.block_h) * cfg.block_h
    full = lambda *shape: pl.BlockSpec(shape, lambda i: (0,) * len(shape))  # noqa: E731
    tile = pl.BlockSpec((cfg.block_rows, cfg.cp), lambda i: (i, 0))
    return V_.pallas_call(
        functools.partial(_kernel, cfg=cfg),
        grid=(C_.cdiv(cfg.rows, cfg.block_rows),),
        in_specs=[tile, full(cfg.cp), full(cfg.cp), full(cfg.cp, hr), full(hr), full(hr, cfg.cp), full(cfg.cp)],
        out_specs=tile,
        out_shape=jax.ShapeDtypeStruct(x2d.shape, x2d.dtype),
        compiler_params=C_.compiler_params(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
        interpret=cfg.interpret,
        name="jaxfold_transition_fwd",
    )(x2d, scale, offset, w1, b1, w2, b2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _transition_2d(x2d, weights, cfg: _Cfg):
    return _forward(x2d, weights, cfg)


def _fwd(x2d, weights, cfg):
    return _forward(x2d, weights, cfg), (x2d, weights)


def _bwd(cfg, res, dy):
    x2d, weights = res
    _, vjp = jax.vjp(lambda x, w: transition_reference(x, *w, eps=cfg.eps), x2d, weights)
    return vjp(dy)


_transition_2d.defvjp(_fwd, _bwd)


def transition(
    x,
    scale,
    offset,
    w1,
    b1,
    w2,
    b2,
    *,
    eps: float = LAYER_NORM_EPS,
    block_rows: int = 64,
    block_h: int = 64,
    num_warps: int = 4,
    num_stages: int = 2,
    interpret: bool | None = None,
    allow_tf32: bool | None = None,
):
    """Fused LN -> Linear -> ReLU -> Linear over the last axis of `x` `[..., c]`; returns x's shape/dtype.

    scale/offset `[c]`, w1 `[c, h]`, b1 `[h]`, w2 `[h, c]`, b2 `[c]` (fp32 parameters are cast to x's dtype
    for the matmuls, as the model does). Differentiable (XLA backward). `interpret=None`: interpret mode
    unless on a GPU backend.
    """
    c = x.shape[-1]
    h = w1.shape[-1]
    expect = {
        "scale": (scale, (c,)),
        "offset": (offset, (c,)),
        "w1": (w1, (c, h)),
        "b1": (b1, (h,)),
        "w2": (w2, (h, c)),
        "b2": (b2, (c,)),
    }
    for name, (arr, shape) in expect.items():
        if tuple(arr.shape) != shape:
            raise ValueError(f"transition: {name} must have shape {shape}, got {tuple(arr.shape)}")
    for name, v in (("block_rows", block_rows), ("block_h", block_h)):
        if v < 16 or v & (v - 1):
            raise ValueError(f"transition: {name} must be a power of two >= 16, got {v}")
    rows = x.size // c if c else 0
    if rows == 0:
        return transition_reference(x, scale, offset, w1, b1, w2, b2, eps)
    dtype = x.dtype
    cfg = _Cfg(
        rows=rows,
        c=c,
        h=h,
        cp=max(16, C_.next_power_of_2(c)),
        hp=max(16, C_.next_power_of_2(h)),
        block_rows=max(16, min(block_rows, C_.next_power_of_2(rows))),
        block_h=max(16, min(block_h, C_.next_power_of_2(h))),
        eps=float(eps),
        num_warps=num_warps,
        num_stages=num_stages,
        precision=C_.matmul_precision(dtype, allow_tf32),
        interpret=C_.resolve_interpret(interpret),
    )
    weights = (
        scale.astype(jnp.float32),
        offset.astype(jnp.float32),
        w1.astype(dtype),
        b1.astype(jnp.float32),
        w2.astype(dtype),
        b2.astype(jnp.float32),
    )
    # One varying-axes type for x and the weights (under shard_map; see _vma.py) before the custom_vjp.
    x2d, weights = V_.match_vma(x.reshape(rows, c), weights)
    return _transition_2d(x2d, weights, cfg).reshape(x.shape)
