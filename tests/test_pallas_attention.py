"""Fused Pallas attention vs the jnp reference (interpret mode on CPU), plus a CUDA lowering check.

Tolerances: float32 inputs must match the float32 reference to ~1e-5 of the largest magnitude (outputs
and every gradient). bf16 inputs are compared with the float32 reference evaluated on the same (bf16-valued)
inputs: the kernel must be within 2e-2 of the largest magnitude, and no worse than 2x (+1e-3) the error of
the plain-XLA bf16 path (`attention_core`'s math run in bf16).
"""

from __future__ import annotations

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import _compat
from pallas_kernels import attention as pattn

# jax >= 0.11 warns that the Pallas Triton backend is deprecated (Mosaic GPU is its successor); expected here.
pytestmark = [
    pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated"),
    pytest.mark.usefixtures("ieee_fp32_dots"),
]

F32_TOL = 1e-5
BF16_TOL = 2e-2


def _inputs(seed, b, nq, nk, h, c, cv, *, dtype=jnp.float32, pair=True, mask="row", full_rows=(), mask_rate=0.3):
    ks = jax.random.split(jax.random.key(seed), 6)
    q = (jax.random.normal(ks[0], (b, nq, h, c)) * c**-0.5).astype(dtype)
    k = jax.random.normal(ks[1], (b, nk, h, c)).astype(dtype)
    v = jax.random.normal(ks[2], (b, nk, h, cv)).astype(dtype)
    rows = b if mask == "row" else 1
    keep = (jax.random.uniform(ks[3], (rows, nk)) > mask_rate).astype(jnp.float32)
    keep = keep.at[:, 0].set(1.0)  # at least one key per row unless asked otherwise
    for r in full_rows:
        keep = keep.at[r].set(0.0)
    bias = 1e9 * (keep - 1.0)
    bias = bias[:, None, None, :] if mask != "none" else jnp.zeros((1, 1, 1, nk), jnp.float32)
    pb = jax.random.normal(ks[4], (h, nq, nk)).astype(dtype) if pair else None
    do = jax.random.normal(ks[5], (b, nq, h, cv)).astype(dtype)
    return q, k, v, bias, pb, do


def _run(fn, q, k, v, bias, pb, do):
    """Output and cotangents (dq, dk, dv, dbias, dpair) of fn, jitted."""

    def f(q, k, v, bias, pb, do):
        out, vjp = jax.vjp(fn, q, k, v, bias, pb)
        return out, vjp(do.astype(out.dtype))

    return jax.jit(f)(q, k, v, bias, pb, do)


def _kernel(**kw):
    return lambda q, k, v, bias, pb: pattn.attention(q, k, v, bias, pb, **kw)


def _f32(x):
    return None if x is None else x.astype(jnp.float32)


def _rel_err(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _check_f32(got, ref, tol=F32_TOL):
    (o, grads), (o_ref, grads_ref) = got, ref
    names = ["dq", "dk", "dv", "dbias", "dpair"]
    assert np.all(np.isfinite(np.asarray(o)))
    assert _rel_err(o, o_ref) < tol, ("out", _rel_err(o, o_ref))
    for name, g, gr in zip(names, grads, grads_ref):
        if name == "dbias":  # the mask bias is a constant for the kernel
            assert g.shape == gr.shape and not np.any(np.asarray(g))
            continue
        if gr is None:
            assert g is None
            continue
        assert g.shape == gr.shape and g.dtype == gr.dtype, name
        assert _rel_err(g, gr) < tol, (name, _rel_err(g, gr))


@pytest.mark.parametrize(
    "b,nq,nk,h,c,pair,mask,blocks",
    [
        (2, 20, 24, 2, 8, True, "row", (16, 16)),  # head dim 8 (padded to 16), Q/K not block multiples
        (2, 32, 32, 2, 16, False, "shared", (16, 16)),  # head dim 16, mask [1,1,1,K] broadcast over rows
        (3, 17, 40, 1, 32, True, "shared", (16, 32)),  # head dim 32, K spans several blocks, ragged Q
        (2, 24, 24, 2, 16, True, "none", (None, None)),  # no mask, default blocks (clamped to 32)
        (2, 33, 47, 1, 24, True, "row", (32, 16)),  # C=24 (masked up to 32 lanes), ragged Q and K
    ],
)
def test_attention_fp32_matches_reference(b, nq, nk, h, c, pair, mask, blocks):
    args = _inputs(b * 100 + nq, b, nq, nk, h, c, c, pair=pair, mask=mask)
    got = _run(_kernel(block_q=blocks[0], block_k=blocks[1], block_q_bwd=blocks[0], block_k_bwd=blocks[1]), *args)
    ref = _run(pattn.attention_reference, *args)
    _check_f32(got, ref)


def test_attention_separate_backward_tiles():
    """Different tiles for the dK/dV, dQ and d(pair) kernels on ragged Q/K (C=8)."""
    args = _inputs(17, 3, 37, 45, 2, 8, 8, pair=True, mask="row")
    tiles = dict(dkdv_q=16, dkdv_k=32, dq_q=32, dq_k=16, dp_q=16, dp_k=32)
    got = _run(_kernel(block_q=32, block_k=16, bwd_blocks=tiles), *args)
    _check_f32(got, _run(pattn.attention_reference, *args))


def test_attention_fp32_value_dim_differs_and_bias_3d():
    """Cv != C, and a rank-3 key bias [1, 1, K] (numpy broadcasting: read as [1, 1, 1, K])."""
    q, k, v, bias, pb, do = _inputs(7, 1, 16, 20, 2, 16, 8, pair=True, mask="row")
    bias3 = bias[0]  # [1, 1, K] -> broadcast as [1, 1, 1, K]
    got = _run(_kernel(block_q=16, block_k=16), q, k, v, bias3, pb, do)
    ref = _run(pattn.attention_reference, q, k, v, bias3, pb, do)
    _check_f32(got, ref)


def test_fully_masked_rows_follow_alphafold():
    """A row whose keys are all masked gets uniform weights over its K real keys (never the padded ones)."""
    b, nq, nk, h, c = 3, 12, 20, 2, 16  # K=20 -> padded to 32 inside the kernel
    q, k, v, bias, pb, do = _inputs(11, b, nq, nk, h, c, c, pair=True, mask="row", full_rows=(1,))
    got = _run(_kernel(block_q=16, block_k=16), q, k, v, bias, pb, do)
    ref = _run(pattn.attention_reference, q, k, v, bias, pb, do)
    _check_f32(got, ref)
    out = np.asarray(got[0])
    uniform = np.broadcast_to(np.asarray(v[1]).mean(axis=0), out[1].shape)
    np.testing.assert_allclose(out[1], uniform, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("c,pair", [(8, True), (32, True), (16, False)])
def test_attention_bf16(c, pair):
    b, nq, nk, h = 2, 24, 40, 2
    q, k, v, bias, pb, do = _inputs(c, b, nq, nk, h, c, c, dtype=jnp.bfloat16, pair=pair, mask="row", full_rows=(1,))
    o, grads = _run(_kernel(block_q=16, block_k=16), q, k, v, bias, pb, do)
    assert o.dtype == jnp.bfloat16
    ref_o, ref_g = _run(pattn.attention_reference, _f32(q), _f32(k), _f32(v), bias, _f32(pb), _f32(do))
    xla_o, xla_g = _run(pattn.attention_reference, q, k, v, bias, pb, do)
    for name, got, ref, xla in zip(
        ["out", "dq", "dk", "dv", "dbias", "dpair"], (o, *grads), (ref_o, *ref_g), (xla_o, *xla_g)
    ):
        if name == "dbias":
            assert not np.any(np.asarray(got))
            continue
        if ref is None:
            assert got is None
            continue
        assert got.dtype == xla.dtype, name
        err = _rel_err(got, ref)
        assert err < BF16_TOL, (name, err)
        assert err <= 2 * _rel_err(xla, ref) + 1e-3, (name, err, _rel_err(xla, ref))


def test_nonbatched_bias_broadcast_and_gradient_reduction():
    """Pair bias given as [1, Q, K] (broadcast over heads): its gradient is reduced over B rows and heads."""
    q, k, v, bias, _, do = _inputs(5, 4, 16, 16, 2, 16, 16, pair=False, mask="row")
    pb = jax.random.normal(jax.random.key(99), (1, 16, 16))
    got = _run(_kernel(block_q=16, block_k=16), q, k, v, bias, pb, do)
    ref = _run(pattn.attention_reference, q, k, v, bias, pb, do)
    _check_f32(got, ref)


def test_bias_varying_over_queries_falls_back_with_warning():
    q, k, v, _, pb, do = _inputs(3, 2, 16, 16, 2, 16, 16, pair=True)
    bias = jax.random.normal(jax.random.key(4), (2, 1, 16, 16))
    with pytest.warns(UserWarning, match="falling back|Falling back"):
        out = pattn.attention(q, k, v, bias, pb)
    np.testing.assert_allclose(out, pattn.attention_reference(q, k, v, bias, pb), rtol=1e-6, atol=1e-6)


def test_bad_bias_shape_raises():
    q, k, v, _, pb, _ = _inputs(3, 2, 16, 16, 2, 16, 16)
    with pytest.raises(ValueError, match="broadcastable"):
        pattn.attention(q, k, v, jnp.zeros((3, 1, 1, 16)), pb)


def test_dpair_reduction_never_materialises_per_row_gradient():
    """With B=32 rows the [S, H, Q, K] partial buffer has S <= 16 < B; nothing of size B*H*Q*K appears."""
    b, n, h, c = 32, 32, 1, 16
    q, k, v, bias, pb, do = _inputs(8, b, n, n, h, c, c, pair=True)

    def f(q, k, v, pb, do):
        out, vjp = jax.vjp(lambda q, k, v, pb: pattn.attention(q, k, v, bias, pb, interpret=False), q, k, v, pb)
        return vjp(do)

    with _compat.cuda_lowering_context():
        text = jax.jit(f).trace(q, k, v, pb, do).lower(lowering_platforms=("cuda",)).as_text()
    sizes = [
        int(np.prod([int(d) for d in m.split("x")]))
        for m in re.findall(r"tensor<((?:\d+x)+)\w+>", text)
        for m in [m.rstrip("x")]
    ]
    assert max(sizes) < b * h * n * n, max(sizes)


def test_attention_core_pallas_switch_matches_xla():
    from jaxfold.model.attention import attention_core

    q, k, v, bias, pb, _ = _inputs(21, 2, 16, 16, 2, 8, 8, pair=True)
    np.testing.assert_allclose(
        attention_core(q, k, v, bias, pb, kernels="pallas"),
        attention_core(q, k, v, bias, pb, kernels="xla"),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("dtype,c,pair", [(jnp.float32, 8, True), (jnp.bfloat16, 32, True), (jnp.bfloat16, 16, False)])
def test_attention_lowers_for_cuda(dtype, c, pair):
    """Lower forward + backward for CUDA on this (CPU) machine: every kernel must produce Triton IR.

    `jit(f).trace(...).lower(lowering_platforms=('cuda',))` runs Pallas' Triton lowering (jaxpr -> Triton
    MLIR, including Triton's power-of-two shape rules and the supported-primitive set); jax >= 0.11 needs an
    abstract GPU device for it, which `cuda_lowering_context` provides. The Triton -> PTX compile itself only
    happens in XLA on a GPU.
    """
    b, nq, nk, h = 2, 40, 72, 4
    q, k, v, bias, pb, do = _inputs(1, b, nq, nk, h, c, c, dtype=dtype, pair=pair)

    def f(q, k, v, pb, do):
        out, vjp = jax.vjp(lambda q, k, v, pb: pattn.attention(q, k, v, bias, pb, interpret=False), q, k, v, pb)
        return out, vjp(do)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with _compat.cuda_lowering_context():
            text = jax.jit(f).trace(q, k, v, pb, do).lower(lowering_platforms=("cuda",)).as_text()
    expected = 4 if pair else 3  # fwd, dkdv, dq (+ dpair)
    assert text.count("__gpu$xla.gpu.triton") == expected
