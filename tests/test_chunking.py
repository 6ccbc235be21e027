"""The one chunking helper and the in-place residual update: same numbers as the whole-array computation,
for any chunk size (whole slices and a shorter last one), any sliced axis, pytree outputs."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfold.model.chunking import chunked, keep_done, output_buffer, over_slices
from jaxfold.model.inplace import add_in_place


def rows_fn(x, y, w):
    # x [n, k, c] rows, y [k, n] (sliced on axis 1), w whole.
    return {"a": jnp.tanh(x @ w) * y.T[:, :, None], "b": jnp.sum(x, axis=-1)}


@pytest.mark.parametrize("chunk", [1, 3, 4, 7, 10, 0, "auto"])
def test_chunked_equals_whole(chunk):
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (10, 5, 3))
    y = jax.random.normal(jax.random.fold_in(key, 1), (5, 10))
    w = jax.random.normal(jax.random.fold_in(key, 2), (3, 3))
    expected = rows_fn(x, y, w)
    got = jax.jit(chunked(rows_fn, chunk, batch_axes=(0, 1, None)))(x, y, w)
    for k in expected:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-6, atol=1e-6)


def test_chunked_output_axis():
    x = jnp.arange(2 * 9 * 4, dtype=jnp.float32).reshape(2, 9, 4)
    fn = lambda v: jnp.swapaxes(v, 0, 1) * 2.0  # noqa: E731  [2, n, 4] -> [n, 2, 4]
    np.testing.assert_array_equal(chunked(fn, 4, batch_axes=(1,), out_axis=0)(x), fn(x))
    with pytest.raises(ValueError, match="disagree on the batch size"):
        chunked(lambda a, b: a, 2)(jnp.zeros((3,)), jnp.zeros((4,)))


@pytest.mark.parametrize(
    "anchor",
    [jnp.array([jnp.nan, 1.0]), jnp.array([jnp.inf]), jnp.array([3], jnp.int32), jax.random.key(0), jnp.zeros((0,))],
)
def test_output_buffer_from_any_input(anchor):
    """The buffer is made from one element of the loop's input (float, integer), or is plain zeros when there
    is no numeric element (a key, an empty array)."""
    got = jax.jit(lambda a: output_buffer((3, 4), jnp.bfloat16, after=(a,)))(anchor)
    assert got.shape == (3, 4) and got.dtype == jnp.bfloat16
    numeric = jnp.issubdtype(anchor.dtype, jnp.number) and anchor.size > 0
    expected = np.full((3, 4), np.asarray(anchor, np.float32).ravel()[0] if numeric else 0.0, np.float32)
    np.testing.assert_array_equal(np.asarray(got, np.float32), expected)


@pytest.mark.parametrize("chunk", [4, 3])
def test_chunked_overwrites_every_element_of_its_buffer(chunk):
    """The buffer starts as a broadcast of the input's first element: a NaN there must reach no other output
    element (every slice, the remainder included, is written)."""
    x = np.arange(11 * 5, dtype=np.float32).reshape(11, 5)
    x[0, 0] = np.nan
    got = jax.jit(chunked(lambda v: v * 2.0, chunk))(jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(got), x * 2.0)


def test_chunked_output_buffers_are_not_one_shared_zero_array():
    """Two chunked loops in one program: each output buffer is made from its own loop's input, so the compiled
    program has no operand-free broadcast (a constant zero XLA could share between them, or fuse into one
    multi-output computation that keeps every buffer alive at once)."""
    fn = chunked(lambda v: jnp.tanh(v) * 2.0, 4)
    text = jax.jit(lambda x: fn(fn(x) + 1.0)).lower(jnp.ones((16, 8, 32))).compile().as_text()
    assert text.count(" while(") == 2
    entry = text[text.index("ENTRY") :]
    # With `jnp.zeros` buffers the CPU compiler makes one `fusion(%constant)` and copies it for each loop.
    constant_fills = re.findall(
        r"= f32\[16,8,32\]\{[\d,]*\} (?:fusion\(\)|fusion\(%constant[\w.]*\)|broadcast\(%constant[\w.]*\)|copy\()",
        entry,
    )
    assert constant_fills == []


def test_chunked_output_buffer_made_from_after():
    """`after` replaces the arguments as what the output buffer is made from: the buffer (and with it the
    loop) cannot exist before `after` does. A program's inputs as arguments would let XLA make the buffer at
    the program's start. The values are those of the arguments alone."""
    fn = lambda v: jnp.tanh(v) * 2.0  # noqa: E731
    x, dependency = jnp.ones((10, 3)), jnp.full((2, 2), 7.0)
    jaxpr = jax.make_jaxpr(lambda v, d: chunked(fn, 4, after=d)(v))(x, dependency).jaxpr
    dependency_var = jaxpr.invars[1]
    users = [eqn.primitive.name for eqn in jaxpr.eqns if dependency_var in eqn.invars]
    assert users, "the dependency is not used: the buffer is made from the arguments"
    untied = jax.make_jaxpr(lambda v, d: chunked(fn, 4)(v))(x, dependency).jaxpr
    assert not any(untied.invars[1] in eqn.invars for eqn in untied.eqns)
    np.testing.assert_array_equal(jax.jit(lambda v, d: chunked(fn, 4, after=d)(v))(x, dependency), fn(x))


@pytest.mark.parametrize("axis,chunk", [(0, 4), (1, 4), (1, 3), (0, 11), (0, 0)])
def test_add_in_place_equals_out_of_place(axis, chunk):
    key = jax.random.PRNGKey(1)
    act = jax.random.normal(key, (11, 11, 6))
    mask = (jax.random.uniform(jax.random.fold_in(key, 1), (11, 11)) > 0.2).astype(jnp.float32)
    w = jax.random.normal(jax.random.fold_in(key, 2), (6, 6))

    def update(block, mask_block):  # depends only on its own slice, like every Evoformer update
        return jax.nn.relu(block @ w) * mask_block[..., None]

    expected = act + update(act, mask)
    got = jax.jit(lambda a, m: add_in_place(update, a, axis, chunk, [(m, axis)]))(act, mask)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("size,chunk", [(12, 4), (11, 4), (13, 5), (5, 4)])
def test_over_slices_writes_every_element_once_in_one_loop(size, chunk):
    """Every element is counted once: a last slice that overlaps the one before it (chunk not dividing the
    size) skips the `done` elements, and the whole walk is one loop (no remainder step at static offsets,
    which XLA's GPU compiler turned into copies and transposes of the whole pair)."""

    def step(counts, start, done):
        block = jax.lax.dynamic_slice_in_dim(counts, start, chunk, 0)
        return jax.lax.dynamic_update_slice_in_dim(counts, keep_done(block, block + 1, done, 0), start, 0)

    fn = jax.jit(lambda c: over_slices(step, c, size, chunk))
    np.testing.assert_array_equal(fn(jnp.zeros((size, 3), jnp.int32)), np.ones((size, 3), np.int32))
    jaxpr = jax.make_jaxpr(lambda c: over_slices(step, c, size, chunk))(jnp.zeros((size, 3), jnp.int32)).jaxpr
    assert [e.primitive.name in ("while", "scan") for e in jaxpr.eqns] == [True]  # (fori_loop lowers to either)


def test_over_slices_refuses_a_chunk_longer_than_the_axis():
    with pytest.raises(ValueError, match="chunk size 8 must be in"):
        over_slices(lambda c, start, done: c, jnp.zeros(5), 5, 8)


def test_keep_done_selects_so_nan_does_not_leak():
    old = jnp.ones((4, 2))
    new = jnp.full((4, 2), jnp.nan).at[2:].set(5.0)
    np.testing.assert_array_equal(keep_done(old, new, jnp.int32(2), 0), [[1, 1], [1, 1], [5, 5], [5, 5]])
    assert keep_done(old, new, 0, 0) is new  # a slice with nothing done: `new` as it is, no select
