"""Remat policies of the scanned stacks: each one gives the same values and gradients; what they save
differs (fewer recomputed matmuls in the backward for 'dots'). Fast tests use a toy block through the same
`scanned_stack`; the Evoformer-stack equality test is slow (CPU compile of a 2-block gradient)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfold.config import model_config
from jaxfold.model.evoformer import evoformer_stack
from jaxfold.model.stacks import REMAT_POLICIES, scanned_stack

TINY = model_config("tiny")
EVO = TINY.model.embeddings_and_evoformer.evoformer


class ToyBlock(nn.Module):
    """(carry [8, 16], bias [16]) -> carry: two matmuls with a nonlinearity, like a transition."""

    @nn.compact
    def __call__(self, x, bias):
        h = jnp.tanh(nn.Dense(32)(x) + jnp.sum(bias))
        return x + nn.Dense(16)(h), None


def toy_loss(policy: str | None):
    stack = scanned_stack(ToyBlock, 3, policy is not None, policy or "nothing")()
    x = jax.random.normal(jax.random.key(1), (8, 16))
    bias = jnp.ones((16,))
    params = stack.init(jax.random.key(2), x, bias)
    return (lambda p: jnp.sum(jnp.sin(stack.apply(p, x, bias)[0]))), params


@pytest.mark.parametrize("policy", ["nothing", "dots", "dots_no_batch"])
def test_toy_stack_policies_same_values_and_gradients(policy):
    ref_loss, params = toy_loss(None)
    loss, _ = toy_loss(policy)
    ref_value, ref_grads = jax.value_and_grad(ref_loss)(params)
    value, grads = jax.value_and_grad(loss)(params)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    for g, r in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-7)


def dot_count(loss, params) -> int:
    return str(jax.make_jaxpr(jax.grad(loss))(params)).count("dot_general")


def test_dots_policy_recomputes_fewer_matmuls_toy():
    counts = {p: dot_count(*toy_loss(p)) for p in ("nothing", "dots")}
    assert counts["dots"] < counts["nothing"], counts


def stack_loss(policy: str | None, shapes_only: bool = False):
    overrides = {
        "model.global_config.use_remat": policy is not None,
        "model.global_config.remat_policy": policy or "nothing",
        "model.global_config.deterministic": True,
    }
    gc = TINY.replace(**overrides).model.global_config

    class Stack(nn.Module):
        @nn.compact
        def __call__(self, msa, pair, msa_mask, pair_mask):
            return evoformer_stack(EVO, gc, 2, False, True, name="stack")((msa, pair), msa_mask, pair_mask)[0]

    n_seq, n_res = 4, 10
    ks = jax.random.split(jax.random.key(0), 3)
    msa = jax.random.normal(ks[0], (n_seq, n_res, 32))
    pair = jax.random.normal(ks[1], (n_res, n_res, 16))
    msa_mask = jnp.ones((n_seq, n_res)).at[:, -2:].set(0.0)
    pair_mask = msa_mask[0][:, None] * msa_mask[0][None, :]
    module = Stack()
    # zero_init off would change the preset; perturb the zero-initialised final layers instead so the
    # gradients flow through every block.
    if shapes_only:
        params = jax.eval_shape(module.init, ks[2], msa, pair, msa_mask, pair_mask)
        return (lambda p: jnp.sum(module.apply(p, msa, pair, msa_mask, pair_mask)[1])), params
    params = module.init(ks[2], msa, pair, msa_mask, pair_mask)
    params = jax.tree_util.tree_map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(p.size), p.shape), params)

    def loss(p):
        m, z = module.apply(p, msa, pair, msa_mask, pair_mask)
        return jnp.sum(jnp.sin(m)) + jnp.sum(z**2) * 1e-2

    return loss, params


@pytest.fixture(scope="module")
def no_remat():  # slow tests only
    loss, params = stack_loss(None)
    return params, jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["nothing", "dots", "dots_no_batch"])
def test_policies_give_the_same_values_and_gradients(no_remat, policy):
    params, (ref_value, ref_grads) = no_remat
    loss, _ = stack_loss(policy)
    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    for g, r in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6 * float(jnp.abs(r).max()) + 1e-9)


def test_evoformer_stack_uses_the_configured_policy():
    """'nothing' recomputes every block matmul in the backward, 'dots' none: count dot_generals (traced only)."""
    counts = {p: dot_count(*stack_loss(p, shapes_only=True)) for p in ("nothing", "dots")}
    assert counts["dots"] < counts["nothing"], counts


def test_every_policy_builds_and_unknown_is_an_error():
    for name, make in REMAT_POLICIES.items():
        assert callable(make()), name
    gc = TINY.replace(
        **{"model.global_config.use_remat": True, "model.global_config.remat_policy": "sometimes"}
    ).model.global_config
    with pytest.raises(ValueError, match="remat_policy"):
        evoformer_stack(EVO, gc, 2, False, True, name="stack")
    with pytest.raises(ValueError, match="remat_policy"):
        model_config("tiny", remat_policy="sometimes")
