"""Fused triangle multiplicative update (outgoing and incoming) in Pallas/Triton, with a custom VJP.

`triangle_multiplication(left, right, gate_input, center_scale, center_offset, output_weights, output_bias,
gating_weights, gating_bias, outgoing=...)` computes what the model's XLA path computes after the operands
are made (Suppl. Algs. 11/12, lines 4-5):

    p   = einsum('ikc,jkc->ijc', left, right)          outgoing
          einsum('kjc,kic->ijc', left, right)          incoming (AlphaFold's equation; note the operand order)
    out = (LayerNorm_c(p) @ output_weights + output_bias) * sigmoid(gate_input @ gating_weights + gating_bias)

left `[I|K, K|J, c]` and right (the masked, gated projections, already masked by the pair mask: a masked
residue contributes exactly zero), gate_input `[I, J, c_z]` (the LayerNorm-ed pair), output `[I, J, c_z]`.
The operands are arguments, not parameters, so the same kernel serves AlphaFold 2.0's separate
`left_projection`/`left_gate` weights and 2.3's fused `projection`/`gate` layout; I != J is allowed (DAP
slices: the output rows of one device against the all-gathered other operand).

Design
------
* Channel-major operands. The triangle product is a batch of c independent `[N, N] x [N, N]` matmuls, one
  per channel. The wrapper hands the kernels `left`/`right` as `[c, N, N]` (`jnp.moveaxis`); the operands are
  made by an elementwise fusion (mask * projection * sigmoid(gate)) anyway, so XLA writes that fusion's
  output in channel-major order and the move costs no extra pass.
* Product kernel `_bmm`, grid `(M/bm, N/bn, c)` (channel slowest, so the tiles of one channel run together
  and share L2): a classic tiled matmul with an fp32 accumulator, `op(a) @ op(b)` with in-register
  transposes. Outgoing is `L_c @ R_c^T`, incoming `R_c^T @ L_c`: the incoming variant transposes tiles in
  registers (`trans_a`), never the `[N, N, c]` pair or operand in memory. Output `p` `[c, I, J]` in the
  operand dtype (bf16 in, fp32 accumulation, bf16 out: what XLA's einsum does).
* Epilogue kernel, grid `(I/ri, J/bj)`: a program loads the weights once, then for each of its `ri`
  rows i loads the `[c, bj]` column tile `p[:, i, j0:j0+bj]`,
  normalises over c in fp32 (two-pass variance, the model LayerNorm's operation order), projects with
  `output_weights` (`[c, c_z]`, tensor-core dot), computes the gate from the `[bj, c_z]` tile of
  `gate_input`, and writes `[bj, c_z]` of the output. The normalised product, the projection and the gate
  logits never reach device memory, and the transposition back to channel-last happens in registers.
* Backward (custom VJP): the product's gradients are the same `_bmm` kernel with other transpose flags
  (outgoing: dL = dP R, dR = dP^T L; incoming: dR = L dP^T, dL = R dP). The epilogue's backward is XLA
  (jax.vjp of the jnp epilogue, recomputing it from the saved product) -- it is bandwidth-bound elementwise
  work plus three small matmuls, and a Pallas version needs cross-program weight-gradient reductions; it is
  the next step if the profile says so.
* Ragged shapes: tiles are powers of two (Triton's rule); rows/columns/channels past the array are handled by
  masked loads (zeros) and masked stores, so nothing is padded in memory. Interpret mode fills
  out-of-bounds block memory with NaN, so the CPU tests catch any unmasked access.
* `product="xla"` swaps the Pallas product for XLA's batched matmul on the same channel-major operands
  (cuBLAS); `bench/triangle_multiplication.py` measures both.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels import _compat as C_
from pallas_kernels import _vma as V_
from pallas_kernels.layer_norm import layer_norm_reference

LAYER_NORM_EPS = 1e-5  # Haiku's default, the one AlphaFold uses for center_layer_norm
EQUATIONS = {True: "ikc,jkc->ijc", False: "kjc,kic->ijc"}


# ----------------------------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------------------------


def _linear_ref(x, w, b):
    return jnp.tensordot(x, w.astype(x.dtype), axes=1) + b.astype(x.dtype)


def epilogue_reference(
    p, gate_input, center_scale, center_offset, output_weights, output_bias, gating_weights, gating_bias
):
    """p `[I, J, c]` (the triangle product) -> `[I, J, c_z]`: LayerNorm, output projection, sigmoid gate."""
    act = _linear_ref(layer_norm_reference(p, center_scale, center_offset, LAYER_NORM_EPS), output_weights, output_bias)
    return act * jax.nn.sigmoid(_linear_ref(gate_input, gating_weights, gating_bias))


def triangle_multiplication_reference(
    left,
    right,
    gate_input,
    center_scale,
    center_offset,
    output_weights,
    output_bias,
    gating_weights,
    gating_bias,
    *,
    outgoing: bool,
):
    """Pure-jnp triangle product + epilogue, the same math as the model's XLA path."""
    p = jnp.einsum(EQUATIONS[outgoing], left, right)
    return epilogue_reference(
        p, gate_input, center_scale, center_offset, output_weights, output_bias, gating_weights, gating_bias
    )


# ----------------------------------------------------------------------------------------------------------
# Batched (per-channel) matmul: out[c] = op(a[c]) @ op(b[c])
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _MatmulCfg:
    m: int
    n: int
    k: int
    trans_a: bool
    trans_b: bool
    bm: int
    bn: int
    bk: int
    num_warps: int
    num_stages: int
    precision: object
    interpret: bool


def _ok(start, size, total):
    """[size] bool of in-bounds indices, or None when every tile is whole."""
    if total % size == 0:
        return None
    return start + jnp.arange(size) < total


def _mask2(rows_ok, cols_ok, shape):
    if rows_ok is None and cols_ok is None:
        return None
    r = rows_ok[:, None] if rows_ok is not None else jnp.ones((shape[0], 1), jnp.bool_)
    c = cols_ok[None, :] if cols_ok is not None else jnp.ones((1, shape[1]), jnp.bool_)
    return jnp.broadcast_to(r & c, shape)


def _load(ref, mask):
    return ref[...] if mask is None else C_.load(ref, mask=mask, other=0.0)


def _store(ref, value, mask):
    C_.store(ref, value, mask=mask)


def _bmm_kernel(a_ref, b_ref, o_ref, *, cfg: _MatmulCfg):
    bm, bn, bk = cfg.bm, cfg.bn, cfg.bk
    m0 = pl.program_id(0) * bm
    n0 = pl.program_id(1) * bn
    m_ok = _ok(m0, bm, cfg.m)
    n_ok = _ok(n0, bn, cfg.n)

    def body(t, acc):
        k0 = pl.multiple_of(t * bk, bk)
        ks = pl.ds(k0, bk)
        k_ok = _ok(k0, bk, cfg.k)
        if cfg.trans_a:  # a is [K, M]: load a [bk, bm] tile, transpose in registers
            a = _load(a_ref.at[ks, :], _mask2(k_ok, m_ok, (bk, bm)))
        else:
            a = _load(a_ref.at[:, ks], _mask2(m_ok, k_ok, (bm, bk)))
        if cfg.trans_b:  # b is [N, K]
            b = _load(b_ref.at[:, ks], _mask2(n_ok, k_ok, (bn, bk)))
        else:
            b = _load(b_ref.at[ks, :], _mask2(k_ok, n_ok, (bk, bn)))
        return acc + C_.dot(a, b, trans_a=cfg.trans_a, trans_b=cfg.trans_b, precision=cfg.precision)

    acc = jax.lax.fori_loop(0, C_.cdiv(cfg.k, bk), body, jnp.zeros((bm, bn), jnp.float32))
    _store(o_ref, acc.astype(o_ref.dtype), _mask2(m_ok, n_ok, (bm, bn)))


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _tile(n: int, want: int) -> int:
    return max(16, min(want, C_.next_power_of_2(n)))


def _bmm_call(a, b, trans_a: bool, trans_b: bool, tiles: Tiles, interpret: bool):
    """`[c, M, N] = op(a[c]) @ op(b[c])` for every channel c, in a's dtype with fp32 accumulation."""
    nc = a.shape[0]
    m, k = (a.shape[2], a.shape[1]) if trans_a else (a.shape[1], a.shape[2])
    n, kb = (b.shape[1], b.shape[2]) if trans_b else (b.shape[2], b.shape[1])
    if k != kb or b.shape[0] != nc:
        raise ValueError(f"bmm: incompatible operands {a.shape} (trans {trans_a}) and {b.shape} (trans {trans_b})")
    small = jnp.dtype(a.dtype).itemsize <= 2
    cfg = _MatmulCfg(
        m=m,
        n=n,
        k=k,
        trans_a=trans_a,
        trans_b=trans_b,
        bm=_tile(m, tiles.bm if small else min(tiles.bm, 64)),
        bn=_tile(n, tiles.bn if small else min(tiles.bn, 64)),
        bk=_tile(k, tiles.bk),
        num_warps=tiles.num_warps,
        num_stages=tiles.num_stages,
        precision=C_.matmul_precision(a.dtype, tiles.allow_tf32),
        interpret=interpret,
    )
    kr = _round_up(k, cfg.bk)  # the block spans the whole (rounded) contraction; the tail is masked
    if trans_a:
        a_spec = pl.BlockSpec((None, kr, cfg.bm), lambda i, j, c: (c, 0, i))
    else:
        a_spec = pl.BlockSpec((None, cfg.bm, kr), lambda i, j, c: (c, i, 0))
    if trans_b:
        b_spec = pl.BlockSpec((None, cfg.bn, kr), lambda i, j, c: (c, j, 0))
    else:
        b_spec = pl.BlockSpec((None, kr, cfg.bn), lambda i, j, c: (c, 0, j))
    return V_.pallas_call(
        functools.partial(_bmm_kernel, cfg=cfg),
        grid=(C_.cdiv(m, cfg.bm), C_.cdiv(n, cfg.bn), nc),
        in_specs=[a_spec, b_spec],
        out_specs=pl.BlockSpec((None, cfg.bm, cfg.bn), lambda i, j, c: (c, i, j)),
        out_shape=jax.ShapeDtypeStruct((nc, m, n), a.dtype),
        compiler_params=C_.compiler_params(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
        interpret=interpret,
        name="jaxfold_triangle_product",
    )(a, b)


def _bmm_xla(a, b, trans_a: bool, trans_b: bool):
    ea = "ckm" if trans_a else "cmk"
    eb = "cnk" if trans_b else "ckn"
    return jnp.einsum(f"{ea},{eb}->cmn", a, b, preferred_element_type=jnp.float32).astype(a.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _product(a, b, trans: tuple[bool, bool], tiles: Tiles, interpret: bool):
    return _bmm_call(a, b, trans[0], trans[1], tiles, interpret)


def _product_fwd(a, b, trans, tiles, interpret):
    return _product(a, b, trans, tiles, interpret), (a, b)


def _product_bwd(trans, tiles, interpret, res, dout):
    """out = op(a) op(b): d op(a) = dout op(b)^T, d op(b) = op(a)^T dout, as kernel calls (no transposes)."""
    a, b = res
    ta, tb = trans
    dout = dout.astype(a.dtype)
    mm = functools.partial(_product, tiles=tiles, interpret=interpret)
    da = mm(b, dout, (tb, True)) if ta else mm(dout, b, (False, not tb))
    db = mm(dout, a, (True, ta)) if tb else mm(a, dout, (not ta, False))
    return da, db


_product.defvjp(_product_fwd, _product_bwd)


# ----------------------------------------------------------------------------------------------------------
# Epilogue: center LayerNorm over channels -> output projection -> x sigmoid(gate)
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _EpiCfg:
    i: int
    j: int
    c: int
    cz: int
    cg: int  # gate input channels
    cp: int
    czp: int
    cgp: int
    bj: int
    ri: int  # output rows per program (the weights are loaded once per program)
    eps: float
    num_warps: int
    precision: object
    interpret: bool


def _vec(ref, n, n_p):
    return _load(ref, None if n == n_p else jnp.arange(n_p) < n).astype(jnp.float32)


def _epilogue_kernel(p_ref, g_ref, scale_ref, offset_ref, wo_ref, bo_ref, wg_ref, bg_ref, o_ref, *, cfg: _EpiCfg):
    """`cfg.ri` output rows x `cfg.bj` columns; the weights are loaded once and reused for every row."""
    bj, ri = cfg.bj, cfg.ri
    i0 = pl.program_id(0) * ri
    j_ok = _ok(pl.program_id(1) * bj, bj, cfg.j)
    c_ok = None if cfg.c == cfg.cp else jnp.arange(cfg.cp) < cfg.c
    cz_ok = None if cfg.cz == cfg.czp else jnp.arange(cfg.czp) < cfg.cz
    cg_ok = None if cfg.cg == cfg.cgp else jnp.arange(cfg.cgp) < cfg.cg
    scale = _vec(scale_ref, cfg.c, cfg.cp)
    offset = _vec(offset_ref, cfg.c, cfg.cp)
    wo = _load(wo_ref, _mask2(c_ok, cz_ok, (cfg.cp, cfg.czp)))
    bo = _vec(bo_ref, cfg.cz, cfg.czp)
    wg = _load(wg_ref, _mask2(cg_ok, cz_ok, (cfg.cgp, cfg.czp)))
    bg = _vec(bg_ref, cfg.cz, cfg.czp)
    ragged_rows = cfg.i % ri != 0  # the last program's rows past I are masked off

    def body(r, carry):
        def rows_masked(mask, shape):
            if not ragged_rows:
                return mask
            ok = jnp.broadcast_to(i0 + r < cfg.i, shape)
            return ok if mask is None else mask & ok

        p_shape, g_shape, o_shape = (cfg.cp, bj), (bj, cfg.cgp), (bj, cfg.czp)
        # [cp, bj]: output row i0 + r, bj columns, all channels.
        p = _load(p_ref.at[:, r, :], rows_masked(_mask2(c_ok, j_ok, p_shape), p_shape)).astype(jnp.float32)
        # LayerNorm over the channel axis (axis 0 here), two-pass variance, padded channels excluded.
        mean = jnp.sum(p, axis=0, keepdims=True) / cfg.c
        xc = p - mean
        if c_ok is not None:
            xc = jnp.where(c_ok[:, None], xc, 0.0)
        var = jnp.sum(xc * xc, axis=0, keepdims=True) / cfg.c
        y = (scale[:, None] * jax.lax.rsqrt(var + cfg.eps)) * xc + offset[:, None]
        y = y.astype(o_ref.dtype)  # the model feeds the projection in the activation dtype
        out = C_.dot(y, wo, trans_a=True, precision=cfg.precision) + bo[None, :]
        g = _load(g_ref.at[r], rows_masked(_mask2(j_ok, cg_ok, g_shape), g_shape))
        z = C_.dot(g, wg, precision=cfg.precision) + bg[None, :]
        _store(
            o_ref.at[r],
            (out * jax.nn.sigmoid(z)).astype(o_ref.dtype),
            rows_masked(_mask2(j_ok, cz_ok, o_shape), o_shape),
        )
        return carry

    jax.lax.fori_loop(0, ri, body, 0)


def _epilogue_call(p_cm, gate_input, weights, cfg: _EpiCfg):
    scale, offset, wo, bo, wg, bg = weights
    vec = lambda n: pl.BlockSpec((n,), lambda i, j: (0,))  # noqa: E731
    mat = lambda r, c: pl.BlockSpec((r, c), lambda i, j: (0, 0))  # noqa: E731
    return V_.pallas_call(
        functools.partial(_epilogue_kernel, cfg=cfg),
        grid=(C_.cdiv(cfg.i, cfg.ri), C_.cdiv(cfg.j, cfg.bj)),
        in_specs=[
            pl.BlockSpec((cfg.cp, cfg.ri, cfg.bj), lambda i, j: (0, i, j)),
            pl.BlockSpec((cfg.ri, cfg.bj, cfg.cgp), lambda i, j: (i, j, 0)),
            vec(cfg.cp),
            vec(cfg.cp),
            mat(cfg.cp, cfg.czp),
            vec(cfg.czp),
            mat(cfg.cgp, cfg.czp),
            vec(cfg.czp),
        ],
        out_specs=pl.BlockSpec((cfg.ri, cfg.bj, cfg.czp), lambda i, j: (i, j, 0)),
        out_shape=jax.ShapeDtypeStruct((cfg.i, cfg.j, cfg.cz), gate_input.dtype),
        compiler_params=C_.compiler_params(num_warps=cfg.num_warps, num_stages=1),
        interpret=cfg.interpret,
        name="jaxfold_triangle_epilogue",
    )(p_cm, gate_input, scale, offset, wo, bo, wg, bg)


def _epilogue_jnp(p_cm, gate_input, weights, eps):
    scale, offset, wo, bo, wg, bg = weights
    p = jnp.moveaxis(p_cm, 0, -1)
    y = layer_norm_reference(p, scale, offset, eps)
    return _linear_ref(y, wo, bo) * jax.nn.sigmoid(_linear_ref(gate_input, wg, bg))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _epilogue(p_cm, gate_input, weights, cfg: _EpiCfg):
    return _epilogue_call(p_cm, gate_input, weights, cfg)


def _epilogue_fwd(p_cm, gate_input, weights, cfg):
    return _epilogue_call(p_cm, gate_input, weights, cfg), (p_cm, gate_input, weights)


def _epilogue_bwd(cfg, res, dout):
    p_cm, gate_input, weights = res
    _, vjp = jax.vjp(lambda p, g, w: _epilogue_jnp(p, g, w, cfg.eps), p_cm, gate_input, weights)
    return vjp(dout)


_epilogue.defvjp(_epilogue_fwd, _epilogue_bwd)


# ----------------------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Tiles:
    """Launch parameters. Product: `bm x bn` output tiles, `bk` contraction steps (fp32 operands cap the
    output tiles at 64). Epilogue: `bj` output columns x `epilogue_rows` rows per program. Tiles are
    powers of two >= 16; `epilogue_rows` any count >= 1 (a loop, not a tile)."""

    bm: int = 128
    bn: int = 128
    bk: int = 32
    num_warps: int = 4
    num_stages: int = 3
    bj: int = 32
    epilogue_rows: int = 8
    epilogue_warps: int = 4
    allow_tf32: bool | None = None

    def __post_init__(self):
        for name in ("bm", "bn", "bk", "bj"):
            v = getattr(self, name)
            if v < 16 or v & (v - 1):
                raise ValueError(f"Tiles.{name} must be a power of two >= 16, got {v}")
        if self.epilogue_rows < 1:
            raise ValueError(f"Tiles.epilogue_rows must be >= 1, got {self.epilogue_rows}")


def triangle_multiplication(
    left,
    right,
    gate_input,
    center_scale,
    center_offset,
    output_weights,
    output_bias,
    gating_weights,
    gating_bias,
    *,
    outgoing: bool,
    product: str = "pallas",
    tiles: Tiles | None = None,
    interpret: bool | None = None,
    eps: float = LAYER_NORM_EPS,
):
    """Fused triangle product -> center LayerNorm -> output projection x sigmoid gate (see module docstring).

    outgoing: left `[I, K, c]`, right `[J, K, c]`; incoming: left `[K, J, c]`, right `[K, I, c]`
    (AlphaFold's 'kjc,kic->ijc'). gate_input `[I, J, c_g]`; center_scale/offset `[c]`; output_weights
    `[c, c_z]`, output_bias `[c_z]`; gating_weights `[c_g, c_z]`, gating_bias `[c_z]`. Returns `[I, J, c_z]`
    in gate_input's dtype. Differentiable in every array argument. `product`: 'pallas' (the kernel) or
    'xla' (XLA's batched matmul on the same channel-major operands). `interpret=None`: interpret mode
    unless on a GPU backend.
    """
    if product not in ("pallas", "xla"):
        raise ValueError(f"product must be 'pallas' or 'xla', got {product!r}")
    if left.ndim != 3 or right.ndim != 3 or gate_input.ndim != 3:
        raise ValueError(f"left/right/gate_input must be rank 3, got {left.shape}, {right.shape}, {gate_input.shape}")
    c = left.shape[-1]
    if right.shape[-1] != c:
        raise ValueError(f"left and right disagree on channels: {left.shape} vs {right.shape}")
    if outgoing:
        (ni, nk), (nj, nk2) = left.shape[:2], right.shape[:2]
    else:
        (nk, nj), (nk2, ni) = left.shape[:2], right.shape[:2]
    if nk != nk2:
        raise ValueError(
            f"left {left.shape} and right {right.shape} disagree on the contracted axis "
            f"({'outgoing' if outgoing else 'incoming'})"
        )
    if gate_input.shape[:2] != (ni, nj):
        raise ValueError(f"gate_input {gate_input.shape} must be [I, J, c_g] = [{ni}, {nj}, c_g]")
    cz = output_weights.shape[-1]
    cg = gate_input.shape[-1]
    expect = {
        "center_scale": (center_scale, (c,)),
        "center_offset": (center_offset, (c,)),
        "output_weights": (output_weights, (c, cz)),
        "output_bias": (output_bias, (cz,)),
        "gating_weights": (gating_weights, (cg, cz)),
        "gating_bias": (gating_bias, (cz,)),
    }
    for name, (arr, shape) in expect.items():
        if tuple(arr.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(arr.shape)}")
    tiles = tiles or Tiles()
    interpret = C_.resolve_interpret(interpret)
    dtype = gate_input.dtype
    if ni == 0 or nj == 0:
        return jnp.zeros((ni, nj, cz), dtype)

    weights = (
        center_scale.astype(jnp.float32),
        center_offset.astype(jnp.float32),
        output_weights.astype(dtype),
        output_bias.astype(jnp.float32),
        gating_weights.astype(dtype),
        gating_bias.astype(jnp.float32),
    )
    # One varying-axes type for every operand (under shard_map; see _vma.py) before the custom_vjps.
    left, right, gate_input, weights = V_.match_vma(left, right, gate_input, weights)
    # Channel-major operands (fused by XLA into the op that produced left/right).
    lc = jnp.moveaxis(left.astype(dtype), -1, 0)
    rc = jnp.moveaxis(right.astype(dtype), -1, 0)
    # outgoing: p_c = L_c @ R_c^T; incoming: p_c = R_c^T @ L_c.
    a, b, trans = (lc, rc, (False, True)) if outgoing else (rc, lc, (True, False))
    if product == "pallas":
        p_cm = _product(a, b, trans, tiles, interpret)
    else:
        p_cm = _bmm_xla(a, b, *trans)

    cfg = _EpiCfg(
        i=ni,
        j=nj,
        c=c,
        cz=cz,
        cg=cg,
        cp=max(16, C_.next_power_of_2(c)),
        czp=max(16, C_.next_power_of_2(cz)),
        cgp=max(16, C_.next_power_of_2(cg)),
        bj=_tile(nj, tiles.bj),
        ri=max(1, min(tiles.epilogue_rows, ni)),
        eps=float(eps),
        num_warps=tiles.epilogue_warps,
        precision=C_.matmul_precision(dtype, tiles.allow_tf32),
        interpret=interpret,
    )
    return _epilogue(p_cm, gate_input, weights, cfg)
