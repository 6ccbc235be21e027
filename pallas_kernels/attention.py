"""Fused AlphaFold attention (flash-style online softmax) in Pallas/Triton, with a Pallas backward.

`attention(q, k, v, bias, nonbatched_bias)` computes exactly what
`jaxfold.model.attention.attention_core(..., kernels='xla')` computes:

    softmax(q k^T + bias + nonbatched_bias) v      (per head, softmax in float32)

q `[B, Q, H, C]` (already scaled by C**-0.5), k `[B, K, H, C]`, v `[B, K, H, Cv]`; `bias` broadcastable to
`[B, H, Q, K]` but constant over H and Q (AlphaFold's key-mask bias `1e9 * (mask - 1)`, `[B, 1, 1, K]` or
`[1, 1, 1, K]`); `nonbatched_bias` `[H, Q, K]` (the pair bias) shared by all B rows, or None. Returns
`[B, Q, H, Cv]` in v's dtype. Fully masked rows get uniform weights, like AlphaFold (the logits are added in
the same order as the reference, so in float32 `qk - 1e9` rounds to the same value for every key).

Design
------
* Layout: q/k/v stay in the model's `[B, L, H, C]` layout (no transposes, no copies); a BlockSpec with
  squeezed B and H dims gives each program a strided `[L, C]` view. The key-mask bias enters as a per-key
  float32 vector `[B or 1, K]`, the pair bias as `[H, Q, K]` in its own dtype (read tile by tile, upcast in
  registers).
* Forward, grid `(cdiv(Q, block_q), B, H)`: a program keeps its `[block_q, C]` query tile in registers and
  walks the keys in `block_k` steps with the online softmax (running max and sum in float32, base-2
  exponentials, fp32 accumulator). It writes the output tile plus, for the backward, the row max `m` and
  `log2(row sum)` (`[B, H, Q]` float32 each). No `[Q, K]` logits ever reach device memory.
  `m` and the sum are kept apart (not folded into one log-sum-exp) because with AlphaFold's -1e9 mask a
  fully masked row has logits near -1e9, where the float32 spacing is 64: `m + log(sum)` would round the
  normaliser away (and an FMA-contracted `s * log2e - lse` does the same); the max is also subtracted
  before the base-2 scaling for that reason.
* Backward (FlashAttention-2 style, probabilities recomputed from `m` and the row sum):
  - `delta = rowsum(dO * O)` in XLA (one cheap fused pass);
  - dK/dV kernel, grid `(cdiv(K, bk), B, H)`: key tile resident, loop over query tiles;
  - dQ kernel, grid `(cdiv(Q, bq), B, H)`: query tile resident, loop over key tiles;
  - d(pair bias) kernel, grid `(cdiv(Q, bq), cdiv(K, bk), H * S)`: a program owns one `[bq, bk]` tile of
    the pair-bias gradient for one head and loops over its share of the B rows (the rows are cut into
    S <= 16 slices only to give the GPU enough programs when Q*K*H is small), accumulating dS in a float32
    register tile; the `[S, H, Q, K]` float32 partials are summed by XLA. A per-row `[B, H, Q, K]` gradient
    is never materialised and there are no atomics (deterministic).
  The mask bias is a constant: its cotangent is zero (it is `stop_gradient`-ed).
* Any Q/K length and head dims 8/16/32 (any C up to 256): nothing is padded in memory. Tiles are powers of
  two (Triton's rule; head dims are rounded up to >= 16 for `tt.dot`), and the ragged parts are handled by
  masked loads/stores: keys past K read a -1e30 mask bias (exactly zero weight, even in fully masked rows),
  queries past Q read zeros and are never stored, channels past C read zeros. Pallas' interpret mode fills
  out-of-bounds block memory with NaN, so the CPU tests would catch any unmasked access.
* float32 inputs use Triton's default TF32 dots unless `jax_default_matmul_precision` is 'highest'/'float32'
  (or `allow_tf32=False`), mirroring XLA's default on GPU; bf16 inputs use bf16 MMAs with fp32 accumulation.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels import _compat as C_
from pallas_kernels import _vma as V_

LOG2E = math.log2(math.e)
_PAD_KEY_BIAS = -1e30  # keys past K: far below AlphaFold's -1e9 mask, so they never get weight
_MAX_DPAIR_SPLITS = 16
_MAX_HEAD_DIM = 256


@dataclasses.dataclass(frozen=True)
class _Cfg:
    batch: int
    nq: int
    nk: int
    c: int
    cv: int
    cp: int
    cvp: int
    mask_batched: bool
    has_pair: bool
    block_q: int
    block_k: int
    dkdv_q: int  # dK/dV kernel: inner query tile
    dkdv_k: int  # dK/dV kernel: resident key tile
    dq_q: int  # dQ kernel: resident query tile
    dq_k: int  # dQ kernel: inner key tile
    dp_q: int  # d(pair) kernel tile
    dp_k: int
    splits: int
    num_warps: int
    num_stages: int
    num_warps_bwd: int
    num_stages_bwd: int
    precision: object
    interpret: bool


# ----------------------------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------------------------


def attention_reference(q, k, v, bias, nonbatched_bias=None):
    """Pure-jnp attention, the same math as `attention_core(..., kernels='xla')`."""
    logits = jnp.einsum("bqhc,bkhc->bhqk", q, k).astype(jnp.float32)
    if bias is not None:
        logits = logits + bias
    if nonbatched_bias is not None:
        logits = logits + nonbatched_bias[None].astype(jnp.float32)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhc->bqhc", weights, v)


# ----------------------------------------------------------------------------------------------------------
# Masked tile access (static decisions: no mask at all when the shapes are aligned)
# ----------------------------------------------------------------------------------------------------------


def _row_ok(start, size, total):
    """[size] bool, or None when every row of every tile is in bounds."""
    if total % size == 0:
        return None
    return start + jnp.arange(size) < total


def _and(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a & b


def _tile_mask(rows_ok, ncols_p, ncols):
    """Full [rows, cols] mask for a [rows, ncols_p] tile whose valid columns are < ncols, or None."""
    cols_ok = None if ncols_p == ncols else (jnp.arange(ncols_p) < ncols)
    if rows_ok is None and cols_ok is None:
        return None
    if rows_ok is None:
        return cols_ok[None, :]
    if cols_ok is None:
        return rows_ok[:, None]
    return rows_ok[:, None] & cols_ok[None, :]


def _load(ref, mask, shape, other=0.0):
    if mask is None:
        return ref[...]
    return C_.load(ref, mask=jnp.broadcast_to(mask, shape), other=other)


def _store(ref, value, mask):
    if mask is None:
        ref[...] = value
    else:
        C_.store(ref, value, mask=jnp.broadcast_to(mask, value.shape))


def _load_mask_vec(ref, rows_ok, size):
    return _load(ref, rows_ok, (size,), other=_PAD_KEY_BIAS)


def _load_pair(ref, q_ok, k_ok, shape):
    m = None
    if q_ok is not None or k_ok is not None:
        qm = q_ok[:, None] if q_ok is not None else jnp.ones((shape[0], 1), jnp.bool_)
        km = k_ok[None, :] if k_ok is not None else jnp.ones((1, shape[1]), jnp.bool_)
        m = qm & km
    return _load(ref, m, shape)


# ----------------------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------------------


def _logits(q, k, mvec, pair_tile, precision):
    """q k^T + mask + pair in float32 (natural units), added in the reference's order."""
    s = C_.dot(q, k, trans_b=True, precision=precision)
    s = s + mvec[None, :]
    if pair_tile is not None:
        s = s + pair_tile.astype(jnp.float32)
    return s


def _probs(s, m, log2l):
    """Softmax probabilities from the saved row max `m` (natural units) and `log2(row sum)`."""
    return jnp.exp2((s - m[:, None]) * LOG2E - log2l[:, None])


def _fwd_kernel(q_ref, k_ref, v_ref, mask_ref, *refs, cfg: _Cfg):
    if cfg.has_pair:
        pair_ref, o_ref, m_ref, ll_ref = refs
    else:
        pair_ref = None
        o_ref, m_ref, ll_ref = refs
    bq, bk = cfg.block_q, cfg.block_k
    q0 = pl.program_id(0) * bq
    q_ok = _row_ok(q0, bq, cfg.nq)
    q = _load(q_ref, _tile_mask(q_ok, cfg.cp, cfg.c), (bq, cfg.cp))

    def body(j, carry):
        acc, m_i, l_i = carry
        k0 = pl.multiple_of(j * bk, bk)
        ks = pl.ds(k0, bk)
        k_ok = _row_ok(k0, bk, cfg.nk)
        k = _load(k_ref.at[ks, :], _tile_mask(k_ok, cfg.cp, cfg.c), (bk, cfg.cp))
        pair = _load_pair(pair_ref.at[:, ks], q_ok, k_ok, (bq, bk)) if pair_ref is not None else None
        s = _logits(q, k, _load_mask_vec(mask_ref.at[ks], k_ok, bk), pair, cfg.precision)
        m_new = jnp.maximum(m_i, jnp.max(s, axis=1))
        alpha = jnp.exp2((m_i - m_new) * LOG2E)
        p = jnp.exp2((s - m_new[:, None]) * LOG2E)
        l_new = alpha * l_i + jnp.sum(p, axis=1)
        v = _load(v_ref.at[ks, :], _tile_mask(k_ok, cfg.cvp, cfg.cv), (bk, cfg.cvp))
        acc = acc * alpha[:, None] + C_.dot(p.astype(v.dtype), v, precision=cfg.precision)
        return acc, m_new, l_new

    acc0 = jnp.zeros((bq, cfg.cvp), jnp.float32)
    m0 = jnp.full((bq,), -jnp.inf, jnp.float32)
    l0 = jnp.zeros((bq,), jnp.float32)
    acc, m_i, l_i = jax.lax.fori_loop(0, C_.cdiv(cfg.nk, bk), body, (acc0, m0, l0))
    _store(o_ref, (acc / l_i[:, None]).astype(o_ref.dtype), _tile_mask(q_ok, cfg.cvp, cfg.cv))
    _store(m_ref, m_i, q_ok)  # row max of the logits (natural units)
    _store(ll_ref, jnp.log(l_i) * LOG2E, q_ok)  # log2 of the row sum of exp(s - m), kept apart from m


def _dkdv_kernel(q_ref, k_ref, v_ref, mask_ref, *refs, cfg: _Cfg):
    if cfg.has_pair:
        pair_ref, do_ref, m_ref, ll_ref, delta_ref, dk_ref, dv_ref = refs
    else:
        pair_ref = None
        do_ref, m_ref, ll_ref, delta_ref, dk_ref, dv_ref = refs
    bq, bk = cfg.dkdv_q, cfg.dkdv_k
    k0 = pl.program_id(0) * bk
    k_ok = _row_ok(k0, bk, cfg.nk)
    k = _load(k_ref, _tile_mask(k_ok, cfg.cp, cfg.c), (bk, cfg.cp))
    v = _load(v_ref, _tile_mask(k_ok, cfg.cvp, cfg.cv), (bk, cfg.cvp))
    mvec = _load_mask_vec(mask_ref, k_ok, bk)

    def body(i, carry):
        dk, dv = carry
        q0 = pl.multiple_of(i * bq, bq)
        qs = pl.ds(q0, bq)
        q_ok = _row_ok(q0, bq, cfg.nq)
        q = _load(q_ref.at[qs, :], _tile_mask(q_ok, cfg.cp, cfg.c), (bq, cfg.cp))
        do = _load(do_ref.at[qs, :], _tile_mask(q_ok, cfg.cvp, cfg.cv), (bq, cfg.cvp))
        pair = _load_pair(pair_ref.at[qs, :], q_ok, k_ok, (bq, bk)) if pair_ref is not None else None
        m = _load(m_ref.at[qs], q_ok, (bq,))
        ll = _load(ll_ref.at[qs], q_ok, (bq,))
        delta = _load(delta_ref.at[qs], q_ok, (bq,))
        p = _probs(_logits(q, k, mvec, pair, cfg.precision), m, ll)
        dv = dv + C_.dot(p.astype(do.dtype), do, trans_a=True, precision=cfg.precision)
        dp = C_.dot(do, v, trans_b=True, precision=cfg.precision)
        ds = p * (dp - delta[:, None])
        dk = dk + C_.dot(ds.astype(q.dtype), q, trans_a=True, precision=cfg.precision)
        return dk, dv

    dk0 = jnp.zeros((bk, cfg.cp), jnp.float32)
    dv0 = jnp.zeros((bk, cfg.cvp), jnp.float32)
    dk, dv = jax.lax.fori_loop(0, C_.cdiv(cfg.nq, bq), body, (dk0, dv0))
    _store(dk_ref, dk.astype(dk_ref.dtype), _tile_mask(k_ok, cfg.cp, cfg.c))
    _store(dv_ref, dv.astype(dv_ref.dtype), _tile_mask(k_ok, cfg.cvp, cfg.cv))


def _dq_kernel(q_ref, k_ref, v_ref, mask_ref, *refs, cfg: _Cfg):
    if cfg.has_pair:
        pair_ref, do_ref, m_ref, ll_ref, delta_ref, dq_ref = refs
    else:
        pair_ref = None
        do_ref, m_ref, ll_ref, delta_ref, dq_ref = refs
    bq, bk = cfg.dq_q, cfg.dq_k
    q0 = pl.program_id(0) * bq
    q_ok = _row_ok(q0, bq, cfg.nq)
    q = _load(q_ref, _tile_mask(q_ok, cfg.cp, cfg.c), (bq, cfg.cp))
    do = _load(do_ref, _tile_mask(q_ok, cfg.cvp, cfg.cv), (bq, cfg.cvp))
    m = _load(m_ref, q_ok, (bq,))
    ll = _load(ll_ref, q_ok, (bq,))
    delta = _load(delta_ref, q_ok, (bq,))

    def body(j, dq):
        k0 = pl.multiple_of(j * bk, bk)
        ks = pl.ds(k0, bk)
        k_ok = _row_ok(k0, bk, cfg.nk)
        k = _load(k_ref.at[ks, :], _tile_mask(k_ok, cfg.cp, cfg.c), (bk, cfg.cp))
        v = _load(v_ref.at[ks, :], _tile_mask(k_ok, cfg.cvp, cfg.cv), (bk, cfg.cvp))
        pair = _load_pair(pair_ref.at[:, ks], q_ok, k_ok, (bq, bk)) if pair_ref is not None else None
        p = _probs(_logits(q, k, _load_mask_vec(mask_ref.at[ks], k_ok, bk), pair, cfg.precision), m, ll)
        dp = C_.dot(do, v, trans_b=True, precision=cfg.precision)
        ds = p * (dp - delta[:, None])
        return dq + C_.dot(ds.astype(k.dtype), k, precision=cfg.precision)

    dq = jax.lax.fori_loop(0, C_.cdiv(cfg.nk, bk), body, jnp.zeros((bq, cfg.cp), jnp.float32))
    _store(dq_ref, dq.astype(dq_ref.dtype), _tile_mask(q_ok, cfg.cp, cfg.c))


def _dpair_kernel(
    q_ref,
    k_ref,
    v_ref,
    mask_ref,
    pair_ref,
    do_ref,
    m_ref,
    ll_ref,
    delta_ref,
    dpair_ref,
    *,
    cfg: _Cfg,
    rows_per_split: int,
):
    """One [bq, bk] tile of d(pair bias) for one head, summed over this program's slice of the B rows."""
    bq, bk = cfg.dp_q, cfg.dp_k
    q0 = pl.program_id(0) * bq
    k0 = pl.program_id(1) * bk
    split = pl.program_id(2) % cfg.splits
    q_ok = _row_ok(q0, bq, cfg.nq)
    k_ok = _row_ok(k0, bk, cfg.nk)
    pair = _load_pair(pair_ref, q_ok, k_ok, (bq, bk))
    q_mask = _tile_mask(q_ok, cfg.cp, cfg.c)
    do_mask = _tile_mask(q_ok, cfg.cvp, cfg.cv)
    k_mask = _tile_mask(k_ok, cfg.cp, cfg.c)
    v_mask = _tile_mask(k_ok, cfg.cvp, cfg.cv)

    def body(t, acc):
        b_raw = split * rows_per_split + t
        b = jnp.minimum(b_raw, cfg.batch - 1)
        q = _load(q_ref.at[b, :, :], q_mask, (bq, cfg.cp))
        k = _load(k_ref.at[b, :, :], k_mask, (bk, cfg.cp))
        v = _load(v_ref.at[b, :, :], v_mask, (bk, cfg.cvp))
        do = _load(do_ref.at[b, :, :], do_mask, (bq, cfg.cvp))
        mvec = _load_mask_vec(mask_ref.at[b, :] if cfg.mask_batched else mask_ref, k_ok, bk)
        m = _load(m_ref.at[b, :], q_ok, (bq,))
        ll = _load(ll_ref.at[b, :], q_ok, (bq,))
        delta = _load(delta_ref.at[b, :], q_ok, (bq,))
        p = _probs(_logits(q, k, mvec, pair, cfg.precision), m, ll)
        dp = C_.dot(do, v, trans_b=True, precision=cfg.precision)
        ds = p * (dp - delta[:, None])
        return acc + jnp.where(b_raw < cfg.batch, ds, 0.0)

    acc = jax.lax.fori_loop(0, rows_per_split, body, jnp.zeros((bq, bk), jnp.float32))
    _store(
        dpair_ref, acc, _and(q_ok[:, None] if q_ok is not None else None, k_ok[None, :] if k_ok is not None else None)
    )


# ----------------------------------------------------------------------------------------------------------
# pallas_call wrappers
# ----------------------------------------------------------------------------------------------------------


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _mask_row(cfg):
    return (lambda b: b) if cfg.mask_batched else (lambda b: 0)


def _forward(q, k, v, mask, pair, cfg: _Cfg):
    b, nq, h, _ = q.shape
    bq, cp, cvp = cfg.block_q, cfg.cp, cfg.cvp
    kr = _round_up(cfg.nk, cfg.block_k)  # block spans whole (rounded) key range; tails are masked
    mr = _mask_row(cfg)
    in_specs = [
        pl.BlockSpec((None, bq, None, cp), lambda i, j, hh: (j, i, hh, 0)),
        pl.BlockSpec((None, kr, None, cp), lambda i, j, hh: (j, 0, hh, 0)),
        pl.BlockSpec((None, kr, None, cvp), lambda i, j, hh: (j, 0, hh, 0)),
        pl.BlockSpec((None, kr), lambda i, j, hh: (mr(j), 0)),
    ]
    args = [q, k, v, mask]
    if cfg.has_pair:
        in_specs.append(pl.BlockSpec((None, bq, kr), lambda i, j, hh: (hh, i, 0)))
        args.append(pair)
    row_spec = pl.BlockSpec((None, None, bq), lambda i, j, hh: (j, hh, i))
    return V_.pallas_call(
        functools.partial(_fwd_kernel, cfg=cfg),
        grid=(C_.cdiv(nq, bq), b, h),
        in_specs=in_specs,
        out_specs=[pl.BlockSpec((None, bq, None, cvp), lambda i, j, hh: (j, i, hh, 0)), row_spec, row_spec],
        out_shape=[
            jax.ShapeDtypeStruct((b, nq, h, cfg.cv), v.dtype),
            jax.ShapeDtypeStruct((b, h, nq), jnp.float32),
            jax.ShapeDtypeStruct((b, h, nq), jnp.float32),
        ],
        compiler_params=C_.compiler_params(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
        interpret=cfg.interpret,
        name="jaxfold_attention_fwd",
    )(*args)


def _backward(q, k, v, mask, pair, o, m, ll, do, cfg: _Cfg):
    b, nq, h, _ = q.shape
    nk = k.shape[1]
    cp, cvp = cfg.cp, cfg.cvp
    mr = _mask_row(cfg)
    delta = jnp.einsum("bqhc,bqhc->bhq", o.astype(jnp.float32), do.astype(jnp.float32))
    params = C_.compiler_params(num_warps=cfg.num_warps_bwd, num_stages=cfg.num_stages_bwd)

    # dK, dV: grid over key tiles, loop over query tiles.
    bq, bk = cfg.dkdv_q, cfg.dkdv_k
    qr = _round_up(nq, bq)
    in_specs = [
        pl.BlockSpec((None, qr, None, cp), lambda j, bb, hh: (bb, 0, hh, 0)),
        pl.BlockSpec((None, bk, None, cp), lambda j, bb, hh: (bb, j, hh, 0)),
        pl.BlockSpec((None, bk, None, cvp), lambda j, bb, hh: (bb, j, hh, 0)),
        pl.BlockSpec((None, bk), lambda j, bb, hh: (mr(bb), j)),
    ]
    args = [q, k, v, mask]
    if cfg.has_pair:
        in_specs.append(pl.BlockSpec((None, qr, bk), lambda j, bb, hh: (hh, 0, j)))
        args.append(pair)
    row_spec = pl.BlockSpec((None, None, qr), lambda j, bb, hh: (bb, hh, 0))
    in_specs += [pl.BlockSpec((None, qr, None, cvp), lambda j, bb, hh: (bb, 0, hh, 0)), row_spec, row_spec, row_spec]
    args += [do, m, ll, delta]
    dk, dv = V_.pallas_call(
        functools.partial(_dkdv_kernel, cfg=cfg),
        grid=(C_.cdiv(nk, bk), b, h),
        in_specs=in_specs,
        out_specs=[
            pl.BlockSpec((None, bk, None, cp), lambda j, bb, hh: (bb, j, hh, 0)),
            pl.BlockSpec((None, bk, None, cvp), lambda j, bb, hh: (bb, j, hh, 0)),
        ],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=params,
        interpret=cfg.interpret,
        name="jaxfold_attention_bwd_dkdv",
    )(*args)

    # dQ: grid over query tiles, loop over key tiles.
    bq, bk = cfg.dq_q, cfg.dq_k
    kr = _round_up(nk, bk)
    in_specs = [
        pl.BlockSpec((None, bq, None, cp), lambda i, bb, hh: (bb, i, hh, 0)),
        pl.BlockSpec((None, kr, None, cp), lambda i, bb, hh: (bb, 0, hh, 0)),
        pl.BlockSpec((None, kr, None, cvp), lambda i, bb, hh: (bb, 0, hh, 0)),
        pl.BlockSpec((None, kr), lambda i, bb, hh: (mr(bb), 0)),
    ]
    args = [q, k, v, mask]
    if cfg.has_pair:
        in_specs.append(pl.BlockSpec((None, bq, kr), lambda i, bb, hh: (hh, i, 0)))
        args.append(pair)
    row_spec = pl.BlockSpec((None, None, bq), lambda i, bb, hh: (bb, hh, i))
    in_specs += [pl.BlockSpec((None, bq, None, cvp), lambda i, bb, hh: (bb, i, hh, 0)), row_spec, row_spec, row_spec]
    args += [do, m, ll, delta]
    dq = V_.pallas_call(
        functools.partial(_dq_kernel, cfg=cfg),
        grid=(C_.cdiv(nq, bq), b, h),
        in_specs=in_specs,
        out_specs=pl.BlockSpec((None, bq, None, cp), lambda i, bb, hh: (bb, i, hh, 0)),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=params,
        interpret=cfg.interpret,
        name="jaxfold_attention_bwd_dq",
    )(*args)

    dpair = None
    if cfg.has_pair:
        s_ = cfg.splits
        bq, bk = cfg.dp_q, cfg.dp_k
        rows_per_split = -(-b // s_)
        row_spec = pl.BlockSpec((b, None, bq), lambda i, j, hs: (0, hs // s_, i))
        in_specs = [
            pl.BlockSpec((b, bq, None, cp), lambda i, j, hs: (0, i, hs // s_, 0)),
            pl.BlockSpec((b, bk, None, cp), lambda i, j, hs: (0, j, hs // s_, 0)),
            pl.BlockSpec((b, bk, None, cvp), lambda i, j, hs: (0, j, hs // s_, 0)),
            (
                pl.BlockSpec((b, bk), lambda i, j, hs: (0, j))
                if cfg.mask_batched
                else pl.BlockSpec((None, bk), lambda i, j, hs: (0, j))
            ),
            pl.BlockSpec((None, bq, bk), lambda i, j, hs: (hs // s_, i, j)),
            pl.BlockSpec((b, bq, None, cvp), lambda i, j, hs: (0, i, hs // s_, 0)),
            row_spec,
            row_spec,
            row_spec,
        ]
        parts = V_.pallas_call(
            functools.partial(_dpair_kernel, cfg=cfg, rows_per_split=rows_per_split),
            grid=(C_.cdiv(nq, bq), C_.cdiv(nk, bk), h * s_),
            in_specs=in_specs,
            out_specs=pl.BlockSpec((None, None, bq, bk), lambda i, j, hs: (hs % s_, hs // s_, i, j)),
            out_shape=jax.ShapeDtypeStruct((s_, h, nq, nk), jnp.float32),
            compiler_params=params,
            interpret=cfg.interpret,
            name="jaxfold_attention_bwd_dpair",
        )(q, k, v, mask, pair, do, m, ll, delta)
        dpair = (parts[0] if s_ == 1 else jnp.sum(parts, axis=0)).astype(pair.dtype)
    return dq, dk, dv, dpair


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention(q, k, v, mask, pair, cfg: _Cfg):
    return _forward(q, k, v, mask, pair, cfg)[0]


def _attention_fwd(q, k, v, mask, pair, cfg):
    o, m, ll = _forward(q, k, v, mask, pair, cfg)
    return o, (q, k, v, mask, pair, o, m, ll)


def _attention_bwd(cfg, res, do):
    q, k, v, mask, pair, o, m, ll = res
    dq, dk, dv, dpair = _backward(q, k, v, mask, pair, o, m, ll, do, cfg)
    return dq, dk, dv, jnp.zeros_like(mask), dpair


_attention.defvjp(_attention_fwd, _attention_bwd)


# ----------------------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------------------


def _key_bias_vector(bias, b: int, q: int, h: int, kk: int):
    """Broadcastable `[B, H, Q, K]` bias that is constant over H and Q -> float32 `[B or 1, K]`, else None."""
    if bias is None:
        return jnp.zeros((1, kk), jnp.float32)
    bias = jnp.asarray(bias)
    if bias.ndim > 4:
        raise ValueError(f"bias must be broadcastable to [B, H, Q, K] = {(b, h, q, kk)}, got {bias.shape}")
    shape = (1,) * (4 - bias.ndim) + tuple(bias.shape)
    try:
        jnp.broadcast_shapes(shape, (b, h, q, kk))
    except ValueError:
        raise ValueError(f"bias {bias.shape} is not broadcastable to [B, H, Q, K] = {(b, h, q, kk)}") from None
    if shape[1] != 1 or shape[2] != 1:
        return None
    vec = bias.reshape(shape[0], shape[3]).astype(jnp.float32)
    return jnp.broadcast_to(vec, (shape[0], kk))


def _pick_block(n: int, requested: int | None, default: int) -> int:
    blk = requested or default
    if blk < 16 or blk & (blk - 1):
        raise ValueError(f"block sizes must be powers of two >= 16, got {blk}")
    return max(16, min(blk, C_.next_power_of_2(n)))


def attention(
    q,
    k,
    v,
    bias,
    nonbatched_bias=None,
    *,
    block_q: int | None = None,
    block_k: int | None = None,
    interpret: bool | None = None,
    block_q_bwd: int | None = None,
    block_k_bwd: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    num_warps_bwd: int | None = None,
    num_stages_bwd: int | None = None,
    bwd_blocks: dict | None = None,
    allow_tf32: bool | None = None,
):
    """Fused `softmax(q k^T + bias + nonbatched_bias) v`; see the module docstring for shapes and design.

    `interpret=None`: Pallas interpret mode unless running on a GPU backend.
    Tuning (defaults from an H200 sweep, `python -m bench.kernels --only sweep`): `block_q`/`block_k`,
    `num_warps`/`num_stages` for the forward kernel (128/64 for bf16, 64/64 for float32; 4/3);
    `block_q_bwd`/`block_k_bwd`, `num_warps_bwd`/`num_stages_bwd` for the three backward kernels
    (64/64, 4/3); `bwd_blocks` overrides single backward tiles, with keys
    'dkdv_q', 'dkdv_k', 'dq_q', 'dq_k', 'dp_q', 'dp_k'. Tiles are powers of two >= 16, clamped to the
    (power-of-two rounded) sequence lengths. A bias that varies over H or Q is not fused: it falls back to
    `attention_reference` with a warning.
    """
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"expected q/k/v of rank 4 ([B, L, H, C]), got {q.shape}, {k.shape}, {v.shape}")
    b, nq, h, c = q.shape
    nk = k.shape[1]
    cv = v.shape[-1]
    if k.shape != (b, nk, h, c) or v.shape[:3] != (b, nk, h):
        raise ValueError(f"inconsistent shapes q {q.shape}, k {k.shape}, v {v.shape}")
    if nonbatched_bias is not None:
        nonbatched_bias = jnp.asarray(nonbatched_bias)
        try:
            nonbatched_bias = jnp.broadcast_to(nonbatched_bias, (h, nq, nk))
        except ValueError:
            raise ValueError(
                f"nonbatched_bias {nonbatched_bias.shape} is not broadcastable to [H, Q, K] = {(h, nq, nk)}"
            ) from None
    mask = _key_bias_vector(bias, b, nq, h, nk)
    if mask is None:
        warnings.warn(
            f"pallas attention: bias of shape {jnp.shape(bias)} varies over heads/queries; only a "
            "per-key bias [B|1, 1, 1, K] is fused. Falling back to the jnp reference.",
            stacklevel=2,
        )
        return attention_reference(q, k, v, bias, nonbatched_bias)
    if max(c, cv) > _MAX_HEAD_DIM:
        warnings.warn(
            f"pallas attention: head dim {max(c, cv)} > {_MAX_HEAD_DIM}; using the jnp reference", stacklevel=2
        )
        return attention_reference(q, k, v, bias, nonbatched_bias)
    mask = jax.lax.stop_gradient(mask)
    if b == 0 or nq == 0 or h == 0:
        return jnp.zeros((b, nq, h, cv), v.dtype)
    if nk == 0:  # softmax over nothing: follow the reference (NaNs) rather than invent a value
        return attention_reference(q, k, v, bias, nonbatched_bias)

    dtype = jnp.result_type(q.dtype, k.dtype, v.dtype)
    out_dtype = v.dtype
    q, k, v = q.astype(dtype), k.astype(dtype), v.astype(dtype)

    bwd = dict(bwd_blocks or {})
    unknown = set(bwd) - {"dkdv_q", "dkdv_k", "dq_q", "dq_k", "dp_q", "dp_k"}
    if unknown:
        raise ValueError(f"unknown bwd_blocks keys {sorted(unknown)}")
    tile = {
        name: _pick_block(
            nq if name.endswith("_q") else nk,
            bwd.get(name) or (block_q_bwd if name.endswith("_q") else block_k_bwd),
            64,
        )
        for name in ("dkdv_q", "dkdv_k", "dq_q", "dq_k", "dp_q", "dp_k")
    }
    # dpair parallelism: split the B rows so that its grid has >= ~1k programs.
    tiles = C_.cdiv(nq, tile["dp_q"]) * C_.cdiv(nk, tile["dp_k"]) * h
    splits = max(1, min(_MAX_DPAIR_SPLITS, b, C_.cdiv(1024, tiles)))

    cfg = _Cfg(
        batch=b,
        nq=nq,
        nk=nk,
        c=c,
        cv=cv,
        cp=max(16, C_.next_power_of_2(c)),
        cvp=max(16, C_.next_power_of_2(cv)),
        mask_batched=mask.shape[0] != 1,
        has_pair=nonbatched_bias is not None,
        # H200 sweep: 128-row query tiles win for bf16; float32 tiles (twice the registers) did better at 64.
        block_q=_pick_block(nq, block_q, 128 if jnp.dtype(dtype).itemsize <= 2 else 64),
        block_k=_pick_block(nk, block_k, 64),
        **tile,
        splits=splits,
        num_warps=num_warps or 4,
        num_stages=num_stages or 3,
        num_warps_bwd=num_warps_bwd or 4,
        num_stages_bwd=num_stages_bwd or 3,
        precision=C_.matmul_precision(dtype, allow_tf32),
        interpret=C_.resolve_interpret(interpret),
    )
    # One varying-axes type for every operand (under shard_map; see _vma.py) before the custom_vjp.
    q, k, v, mask, nonbatched_bias = V_.match_vma(q, k, v, mask, nonbatched_bias)
    return _attention(q, k, v, mask, nonbatched_bias, cfg).astype(out_dtype)
