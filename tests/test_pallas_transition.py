"""Fused Pallas transition (interpret mode on CPU) vs the jnp reference and the model's Transition module,
plus a CUDA lowering check. Tolerances as in test_pallas_attention: fp32 within 1e-5 of the largest
magnitude; bf16 within 2e-2 and no worse than 2x (+1e-3) the XLA bf16 path's own error vs fp32."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfold.config import model_config
from jaxfold.model.transition import Transition
from pallas_kernels import _compat
from pallas_kernels import transition as ptr

pytestmark = [
    pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated"),
    pytest.mark.usefixtures("ieee_fp32_dots"),
]


def case(seed, shape, h):
    c = shape[-1]
    ks = jax.random.split(jax.random.key(seed), 7)
    x = jax.random.normal(ks[0], shape)
    w = (
        1 + 0.1 * jax.random.normal(ks[1], (c,)),
        0.1 * jax.random.normal(ks[2], (c,)),
        jax.random.normal(ks[3], (c, h)) / np.sqrt(c),
        0.1 * jax.random.normal(ks[4], (h,)),
        jax.random.normal(ks[5], (h, c)) / np.sqrt(h),
        0.1 * jax.random.normal(ks[6], (c,)),
    )
    return x, w


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("shape,h,blocks", [((5, 7, 32), 128, {}), ((3, 11, 24), 72, dict(block_rows=16, block_h=16))])
def test_fp32_values_and_gradients(shape, h, blocks):
    x, w = case(0, shape, h)
    out, vjp = jax.vjp(lambda x, w: ptr.transition(x, *w, **blocks), x, w)
    ref, vjp_ref = jax.vjp(lambda x, w: ptr.transition_reference(x, *w), x, w)
    assert rel_err(out, ref) < 1e-5
    dy = jax.random.normal(jax.random.key(9), out.shape)
    for g, r in zip(jax.tree_util.tree_leaves(vjp(dy)), jax.tree_util.tree_leaves(vjp_ref(dy))):
        assert rel_err(g, r) < 1e-5


def test_bf16():
    x, w = case(1, (8, 16, 64), 256)
    x = x.astype(jnp.bfloat16)
    ref = ptr.transition_reference(x.astype(jnp.float32), *w)
    err = rel_err(ptr.transition(x, *w), ref)
    xla_err = rel_err(ptr.transition_reference(x, *w), ref)
    assert err < 2e-2 and err <= 2 * xla_err + 1e-3, (err, xla_err)


def test_matches_model_transition_module():
    cfg = model_config("model_1_ptm", zero_init=False)
    mod = Transition(cfg.model.embeddings_and_evoformer.evoformer.pair_transition, cfg.model.global_config)
    x, _ = case(2, (6, 6, 128), 512)
    params = mod.init(jax.random.key(0), x, jnp.ones((6, 6)))
    p = params["params"]
    fused = ptr.transition(
        x,
        p["input_layer_norm"]["scale"],
        p["input_layer_norm"]["offset"],
        p["transition1"]["weights"],
        p["transition1"]["bias"],
        p["transition2"]["weights"],
        p["transition2"]["bias"],
    )
    assert rel_err(fused, mod.apply(params, x, jnp.ones((6, 6)))) < 1e-5


def test_bad_shapes_are_errors():
    x, w = case(3, (4, 4, 16), 64)
    with pytest.raises(ValueError, match="w2"):
        ptr.transition(x, *w[:4], w[4][:8], w[5])
    with pytest.raises(ValueError, match="power of two"):
        ptr.transition(x, *w, block_rows=24)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_lowers_for_cuda(dtype):
    x, w = case(4, (40, 128), 512)
    x = x.astype(dtype)

    def f(x, w):
        out, vjp = jax.vjp(lambda x, w: ptr.transition(x, *w, interpret=False), x, w)
        return out, vjp(out)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with _compat.cuda_lowering_context():
            text = jax.jit(f).trace(x, w).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("__gpu$xla.gpu.triton") == 1
