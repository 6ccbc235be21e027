"""Fused last-axis LayerNorm (forward and backward) in Pallas/Triton.

`layer_norm(x, scale, offset, eps)` = `(x - mean) * rsqrt(var + eps) * scale + offset` over the last axis,
statistics in float32, result in `x.dtype`; the same operation order as `jaxfold.model.primitives.layer_norm`
(`inv = scale * rsqrt(var + eps); inv * (x - mean) + offset`), with the two-pass variance (mean of squared
deviations, never `E[x^2] - E[x]^2`).

Design
------
* `x` is viewed as `[M, C]` (a free reshape). Each program owns a `[block_rows, Cp]` tile of rows, where
  `Cp = next_power_of_2(C)` (Triton tensors must be powers of two): columns `>= C` (e.g. C = 384 -> 512)
  and the ragged last row block are handled with masked loads/stores inside the kernel, so the wrapper never
  copies `x` into a padded buffer.
* Forward: one read of `x`, one write of `y`; nothing else is saved (the backward recomputes mean/rstd
  from `x`, which it reads anyway).
* Backward, one kernel: each program walks `rows_per_program = block_rows * inner_blocks` rows, writes
  `dx`, and accumulates `dscale = sum(dy * xhat)` and `doffset = sum(dy)` for its rows in float32
  registers; the `[G, C]` per-program partials are then summed by XLA (pairwise tree). The reduction is
  thus blocked: in-tile tree sums, a short sequential sum over at most `inner_blocks` (<= 8) tiles, then a
  pairwise sum over programs -- no long sequential fp32 accumulation, no atomics, deterministic.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels import _compat as C_
from pallas_kernels import _vma as V_

_MAX_COLS = 16384  # one row must fit in one tile


@dataclasses.dataclass(frozen=True)
class _Cfg:
    eps: float
    cols: int
    cols_p: int
    block_rows: int
    inner_blocks: int
    num_warps: int
    interpret: bool


def layer_norm_reference(x, scale, offset, eps: float = 1e-5):
    """Pure-jnp LayerNorm, identical to `jaxfold.model.primitives.layer_norm(..., kernels='xla')`."""
    dtype = x.dtype
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    variance = jnp.var(x32, axis=-1, keepdims=True)
    inv = scale.astype(jnp.float32) * jax.lax.rsqrt(variance + eps)
    return (inv * (x32 - mean) + offset.astype(jnp.float32)).astype(dtype)


def _row_stats(x, mask, cols, eps):
    """x: fp32 [R, Cp] with masked entries already 0. Returns centred x (masked -> 0) and rstd [R, 1]."""
    mean = jnp.sum(x, axis=1, keepdims=True) / cols
    xc = jnp.where(mask, x - mean, 0.0)
    var = jnp.sum(xc * xc, axis=1, keepdims=True) / cols
    return xc, jax.lax.rsqrt(var + eps)


def _fwd_kernel(x_ref, scale_ref, offset_ref, y_ref, *, cfg: _Cfg, rows_total: int):
    i = pl.program_id(0)
    rows = i * cfg.block_rows + jnp.arange(cfg.block_rows)
    cols = jnp.arange(cfg.cols_p)
    col_ok = cols < cfg.cols
    mask = (rows[:, None] < rows_total) & col_ok[None, :]
    x = C_.load(x_ref, mask=mask, other=0.0).astype(jnp.float32)
    scale = C_.load(scale_ref, mask=col_ok, other=0.0).astype(jnp.float32)
    offset = C_.load(offset_ref, mask=col_ok, other=0.0).astype(jnp.float32)
    xc, rstd = _row_stats(x, mask, cfg.cols, cfg.eps)
    inv = scale[None, :] * rstd
    y = inv * xc + offset[None, :]
    C_.store(y_ref, y.astype(y_ref.dtype), mask=mask)


def _bwd_kernel(x_ref, scale_ref, dy_ref, dx_ref, dscale_ref, doffset_ref, *, cfg: _Cfg, rows_total: int):
    i = pl.program_id(0)
    br = cfg.block_rows
    cols = jnp.arange(cfg.cols_p)
    col_ok = cols < cfg.cols
    scale = C_.load(scale_ref, mask=col_ok, other=0.0).astype(jnp.float32)

    def body(t, carry):
        dscale_acc, doffset_acc = carry
        rows = (i * cfg.inner_blocks + t) * br + jnp.arange(br)
        mask = (rows[:, None] < rows_total) & col_ok[None, :]
        sl = pl.ds(pl.multiple_of(t * br, br), br)
        x = C_.load(x_ref.at[sl, :], mask=mask, other=0.0).astype(jnp.float32)
        dy = C_.load(dy_ref.at[sl, :], mask=mask, other=0.0).astype(jnp.float32)
        xc, rstd = _row_stats(x, mask, cfg.cols, cfg.eps)
        xhat = xc * rstd
        g = dy * scale[None, :]
        c1 = jnp.sum(g * xhat, axis=1, keepdims=True) / cfg.cols
        c2 = jnp.sum(g, axis=1, keepdims=True) / cfg.cols
        dx = (g - c2 - xhat * c1) * rstd
        C_.store(dx_ref.at[sl, :], dx.astype(dx_ref.dtype), mask=mask)
        return dscale_acc + jnp.sum(dy * xhat, axis=0), doffset_acc + jnp.sum(dy, axis=0)

    zeros = jnp.zeros((cfg.cols_p,), jnp.float32)
    dscale, doffset = jax.lax.fori_loop(0, cfg.inner_blocks, body, (zeros, zeros))
    dscale_ref[...] = dscale
    doffset_ref[...] = doffset


def _forward(x2d, scale, offset, cfg: _Cfg):
    m = x2d.shape[0]
    grid = (C_.cdiv(m, cfg.block_rows),)
    vec_spec = pl.BlockSpec((cfg.cols_p,), lambda i: (0,))
    tile_spec = pl.BlockSpec((cfg.block_rows, cfg.cols_p), lambda i: (i, 0))
    return V_.pallas_call(
        functools.partial(_fwd_kernel, cfg=cfg, rows_total=m),
        grid=grid,
        in_specs=[tile_spec, vec_spec, vec_spec],
        out_specs=tile_spec,
        out_shape=jax.ShapeDtypeStruct(x2d.shape, x2d.dtype),
        compiler_params=C_.compiler_params(num_warps=cfg.num_warps, num_stages=1),
        interpret=cfg.interpret,
        name="jaxfold_layer_norm_fwd",
    )(x2d, scale, offset)


def _backward(x2d, scale, dy, cfg: _Cfg):
    m = x2d.shape[0]
    rows_pp = cfg.block_rows * cfg.inner_blocks
    g = C_.cdiv(m, rows_pp)
    tile_spec = pl.BlockSpec((rows_pp, cfg.cols_p), lambda i: (i, 0))
    part_spec = pl.BlockSpec((None, cfg.cols_p), lambda i: (i, 0))
    part_shape = jax.ShapeDtypeStruct((g, cfg.cols_p), jnp.float32)
    dx, dscale_p, doffset_p = V_.pallas_call(
        functools.partial(_bwd_kernel, cfg=cfg, rows_total=m),
        grid=(g,),
        in_specs=[tile_spec, pl.BlockSpec((cfg.cols_p,), lambda i: (0,)), tile_spec],
        out_specs=[tile_spec, part_spec, part_spec],
        out_shape=[jax.ShapeDtypeStruct(x2d.shape, x2d.dtype), part_shape, part_shape],
        compiler_params=C_.compiler_params(num_warps=cfg.num_warps, num_stages=2),
        interpret=cfg.interpret,
        name="jaxfold_layer_norm_bwd",
    )(x2d, scale, dy)
    # Pairwise (tree) reduction of the per-program partials in XLA, in float32.
    return dx, jnp.sum(dscale_p[:, : cfg.cols], axis=0), jnp.sum(doffset_p[:, : cfg.cols], axis=0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm_2d(x2d, scale, offset, cfg: _Cfg):
    return _forward(x2d, scale, offset, cfg)


def _layer_norm_2d_fwd(x2d, scale, offset, cfg):
    return _forward(x2d, scale, offset, cfg), (x2d, scale, offset)


def _layer_norm_2d_bwd(cfg, res, dy):
    x2d, scale, offset = res
    dx, dscale, doffset = _backward(x2d, scale, dy, cfg)
    return dx, dscale.astype(scale.dtype), doffset.astype(offset.dtype)


_layer_norm_2d.defvjp(_layer_norm_2d_fwd, _layer_norm_2d_bwd)


def _choose_cfg(m: int, cols: int, eps: float, interpret: bool, block_rows: int | None) -> _Cfg:
    cols_p = max(16, C_.next_power_of_2(cols))
    tile_elems = 4096
    if block_rows is None:
        block_rows = max(1, min(64, tile_elems // cols_p))
        block_rows = min(block_rows, max(1, C_.next_power_of_2(m)))
    block_rows = C_.next_power_of_2(block_rows)
    n_blocks = C_.cdiv(m, block_rows)
    inner = max(1, min(8, n_blocks // 2048))  # keep >= ~2k programs, at most 8 tiles per program
    num_warps = 4 if block_rows * cols_p <= 4096 else 8
    return _Cfg(
        eps=float(eps),
        cols=cols,
        cols_p=cols_p,
        block_rows=block_rows,
        inner_blocks=inner,
        num_warps=num_warps,
        interpret=interpret,
    )


def layer_norm(x, scale, offset, eps: float = 1e-5, *, interpret: bool | None = None, block_rows: int | None = None):
    """LayerNorm over the last axis of `x` with `scale`/`offset` of shape `[C]`; fp32 stats, x.dtype out.

    Differentiable in `x`, `scale` and `offset` (Pallas backward). `interpret=None`: interpret mode unless
    running on a GPU backend.
    """
    cols = x.shape[-1]
    if scale.shape != (cols,) or offset.shape != (cols,):
        raise ValueError(f"scale/offset must have shape ({cols},), got {scale.shape} and {offset.shape}")
    m = 1
    for d in x.shape[:-1]:
        m *= d
    if cols > _MAX_COLS or m == 0:
        if m:
            warnings.warn(f"pallas layer_norm: {cols} channels > {_MAX_COLS}; using the jnp reference", stacklevel=2)
        return layer_norm_reference(x, scale, offset, eps)
    cfg = _choose_cfg(m, cols, eps, C_.resolve_interpret(interpret), block_rows)
    # One varying-axes type for all three (under shard_map; see _vma.py) before the custom_vjp.
    x2d, scale, offset = V_.match_vma(x.reshape(m, cols), scale, offset)
    y = _layer_norm_2d(x2d, scale, offset, cfg)
    return y.reshape(x.shape)
