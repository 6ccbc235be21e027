"""Fused Pallas LayerNorm vs the jnp reference (interpret mode on CPU), plus a CUDA lowering check.

Tolerances: float32 within 1e-5 of the largest magnitude (output, dx, dscale, doffset). bf16 inputs are
compared with the float32 reference on the same bf16-valued inputs: within 1e-2 of the largest magnitude
(one bf16 rounding of the output is 2**-8 ~ 3.9e-3 relative) and no worse than 2x (+1e-3) the plain-XLA
bf16 path.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import _compat
from pallas_kernels import layer_norm as pln

# jax >= 0.11 warns that the Pallas Triton backend is deprecated (Mosaic GPU is its successor); expected here.
pytestmark = [
    pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated"),
    pytest.mark.usefixtures("ieee_fp32_dots"),
]

F32_TOL = 1e-5
BF16_TOL = 1e-2


def _inputs(seed, shape, dtype=jnp.float32, param_dtype=jnp.float32):
    ks = jax.random.split(jax.random.key(seed), 4)
    x = (jax.random.normal(ks[0], shape) * 3.0 + 1.5).astype(dtype)
    scale = (1.0 + 0.5 * jax.random.normal(ks[1], shape[-1:])).astype(param_dtype)
    offset = jax.random.normal(ks[2], shape[-1:]).astype(param_dtype)
    dy = jax.random.normal(ks[3], shape).astype(dtype)
    return x, scale, offset, dy


def _run(fn, x, scale, offset, dy, eps=1e-5):
    def f(x, scale, offset, dy):
        y, vjp = jax.vjp(lambda x, s, o: fn(x, s, o, eps), x, scale, offset)
        return y, vjp(dy.astype(y.dtype))

    return jax.jit(f)(x, scale, offset, dy)


def _rel_err(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


@pytest.mark.parametrize("shape", [(3, 5, 64), (37, 128), (2, 9, 256), (3, 7, 384), (11, 48), (4, 100)])
def test_layer_norm_fp32(shape):
    args = _inputs(shape[-1], shape)
    (y, grads), (y_ref, grads_ref) = _run(pln.layer_norm, *args), _run(pln.layer_norm_reference, *args)
    assert y.shape == shape and y.dtype == jnp.float32
    assert _rel_err(y, y_ref) < F32_TOL
    for name, g, gr in zip(["dx", "dscale", "doffset"], grads, grads_ref):
        assert g.shape == gr.shape and g.dtype == gr.dtype, name
        assert _rel_err(g, gr) < F32_TOL, (name, _rel_err(g, gr))


@pytest.mark.parametrize("shape", [(5, 13, 128), (3, 7, 384)])
def test_layer_norm_bf16(shape):
    x, scale, offset, dy = _inputs(7, shape, dtype=jnp.bfloat16)
    y, grads = _run(pln.layer_norm, x, scale, offset, dy)
    assert y.dtype == jnp.bfloat16 and grads[0].dtype == jnp.bfloat16 and grads[1].dtype == jnp.float32
    f32 = lambda t: t.astype(jnp.float32)  # noqa: E731
    y_ref, g_ref = _run(pln.layer_norm_reference, f32(x), scale, offset, f32(dy))
    y_xla, g_xla = _run(pln.layer_norm_reference, x, scale, offset, dy)
    for name, got, ref, xla in zip(["y", "dx", "dscale", "doffset"], (y, *grads), (y_ref, *g_ref), (y_xla, *g_xla)):
        err = _rel_err(got, ref)
        assert err < BF16_TOL, (name, err)
        assert err <= 2 * _rel_err(xla, ref) + 1e-3, (name, err, _rel_err(xla, ref))


def test_layer_norm_param_reduction_is_accurate_over_many_rows():
    """dscale/doffset over 8192 rows vs a float64 numpy reference (blocked + pairwise reduction)."""
    x, scale, offset, dy = _inputs(3, (8192, 64))
    _, (dx, dscale, doffset) = _run(pln.layer_norm, x, scale, offset, dy)
    x64, dy64 = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    mean = x64.mean(-1, keepdims=True)
    xhat = (x64 - mean) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(np.asarray(dscale), (dy64 * xhat).sum(0), rtol=2e-6, atol=2e-5)
    np.testing.assert_allclose(np.asarray(doffset), dy64.sum(0), rtol=2e-6, atol=2e-5)


def test_primitives_layer_norm_pallas_switch_matches_xla():
    from jaxfold.model.primitives import layer_norm

    x, scale, offset, _ = _inputs(5, (4, 6, 128))
    np.testing.assert_allclose(
        layer_norm(x, scale, offset, kernels="pallas"),
        layer_norm(x, scale, offset, kernels="xla"),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("dtype,channels", [(jnp.float32, 128), (jnp.bfloat16, 384)])
def test_layer_norm_lowers_for_cuda(dtype, channels):
    """Forward + backward lower to Triton IR for CUDA on this CPU machine (see the attention test)."""
    x, scale, offset, dy = _inputs(1, (3, 50, channels), dtype=dtype)

    def f(x, scale, offset, dy):
        y, vjp = jax.vjp(lambda x, s, o: pln.layer_norm(x, s, o, interpret=False), x, scale, offset)
        return y, vjp(dy)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with _compat.cuda_lowering_context():
            text = jax.jit(f).trace(x, scale, offset, dy).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("__gpu$xla.gpu.triton") == 2
