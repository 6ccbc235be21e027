"""Property tests of jaxfold.common.geometry (Vec3, Rot3, Rigid, quaternions).

Hypothesis draws small batches of float32 data; each example is checked as one batch.
The computations under test are wrapped in `jax.jit` (which also tests that everything
traces): one compile per test is much cheaper on CPU than compiling each of the
dozens of eager primitives separately.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxfold.common.geometry import Rigid, Rot3, Vec3, quat_affine_pre_compose, quat_multiply, quat_multiply_by_vec

settings.register_profile("geometry", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("geometry")

BATCH = 8
ATOL = 2e-5
RNG = np.random.default_rng(0)


def _float_arrays(shape, bound):
    return hnp.arrays(np.float32, shape, elements=st.floats(-bound, bound, width=32, allow_nan=False))


def _usable_quaternions(q):
    """Rows with tiny norm are replaced by the identity so they can be normalised."""
    small = np.linalg.norm(q, axis=-1, keepdims=True) < 0.1
    return np.where(small, np.array([1.0, 0.0, 0.0, 0.0], np.float32), q)


quaternions = _float_arrays((BATCH, 4), 1.0).map(_usable_quaternions)
vectors = _float_arrays((BATCH, 3), 10.0)
updates = _float_arrays((BATCH, 6), 1.0)


def _unit(q):
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def _normal(*shape):
    return jnp.asarray(RNG.normal(size=shape).astype(np.float32))


def _rigid(q, t) -> Rigid:
    """Rigid from quaternion [..., 4] and translation [..., 3] arrays."""
    return Rigid(Rot3.from_quaternion(q), Vec3.from_array(t))


def _v(a) -> Vec3:
    return Vec3.from_array(a)


# ---------------------------------------------------------------------------------------
# Rotations and quaternions.
# ---------------------------------------------------------------------------------------


@jax.jit
def _rot_matrix_and_back(q):
    rot = Rot3.from_quaternion(q)
    return rot.to_array(), rot.to_quaternion()


@given(quaternions)
def test_rotation_from_quaternion_is_orthonormal_with_det_one(q):
    r, _ = _rot_matrix_and_back(q)
    r = np.asarray(r, np.float64)
    np.testing.assert_allclose(r @ np.swapaxes(r, -1, -2), np.broadcast_to(np.eye(3), r.shape), atol=ATOL)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=ATOL)


@given(quaternions)
def test_quaternion_rotation_round_trip_up_to_sign(q):
    q_unit = _unit(q)
    _, back = _rot_matrix_and_back(q)
    back = np.asarray(back)
    # q and -q are the same rotation: |<q, q'>| = 1.
    dots = np.sum(back * q_unit, axis=-1, keepdims=True)
    np.testing.assert_allclose(np.abs(dots), 1.0, atol=1e-5)
    np.testing.assert_allclose(back * np.sign(dots), q_unit, atol=1e-4)


def test_from_quaternion_known_values():
    # 90 degrees about z, real part first: (cos 45, 0, 0, sin 45).
    c = np.cos(np.pi / 4)
    r = Rot3.from_quaternion(jnp.array([c, 0.0, 0.0, c]))
    np.testing.assert_allclose(r.to_array(), [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-6)
    np.testing.assert_allclose(r.apply(_v(jnp.array([1.0, 0.0, 0.0]))).to_array(), [0, 1, 0], atol=1e-6)
    # normalize=True rescales; normalize=False trusts the input.
    np.testing.assert_allclose(Rot3.from_quaternion(jnp.array([2.0, 0.0, 0.0, 0.0])).to_array(), np.eye(3))
    np.testing.assert_allclose(
        Rot3.from_quaternion(jnp.array([2.0, 0.0, 0.0, 0.0]), normalize=False).to_array(), 4 * np.eye(3)
    )


@jax.jit
def _product_vs_composition(q1, q2):
    r12 = Rot3.from_quaternion(quat_multiply(q1, q2))
    return r12.to_array(), (Rot3.from_quaternion(q1) @ Rot3.from_quaternion(q2)).to_array()


@given(quaternions, quaternions)
def test_quaternion_product_matches_rotation_composition(q1, q2):
    got, expected = _product_vs_composition(q1, q2)
    np.testing.assert_allclose(got, expected, atol=ATOL)


@jax.jit
def _by_vec_vs_pure(q, v):
    pure = jnp.concatenate([jnp.zeros_like(v[:, :1]), v], axis=-1)
    return quat_multiply_by_vec(q, v), quat_multiply(q, pure)


@given(quaternions, vectors)
def test_quat_multiply_by_vec_is_product_with_pure_quaternion(q, v):
    got, expected = _by_vec_vs_pure(q, v)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-4)


@jax.jit
def _two_vector_rotation(a, b):
    return Rot3.from_two_vectors(_v(a), _v(b)).to_array()


@given(vectors, vectors)
def test_from_two_vectors_is_gram_schmidt(a, b):
    # The robust norm's epsilon (1e-8 under the square root) visibly shortens vectors
    # below ~0.1, so only well-conditioned pairs are checked for exact orthonormality.
    norm_a = np.linalg.norm(a, axis=-1)
    keep = (norm_a > 0.5) & (np.linalg.norm(np.cross(a, b), axis=-1) > 0.5 * norm_a)
    r = np.asarray(_two_vector_rotation(a, b))[keep]
    a, b = a[keep], b[keep]
    np.testing.assert_allclose(r @ np.swapaxes(r, -1, -2), np.broadcast_to(np.eye(3), r.shape), atol=1e-4)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-4)
    # Column 0 is along a; b lies in the plane of columns 0 and 1 with positive y.
    np.testing.assert_allclose(r[:, :, 0], _unit(a), atol=1e-4)
    local_b = np.einsum("nji,nj->ni", r, b)
    np.testing.assert_allclose(local_b[:, 2], 0.0, atol=1e-3)
    assert (local_b[:, 1] >= -1e-3).all()


# ---------------------------------------------------------------------------------------
# Rigid transforms.
# ---------------------------------------------------------------------------------------


@jax.jit
def _group_identities(qa, ta, qb, tb):
    a, b = _rigid(qa, ta), _rigid(qb, tb)
    return {
        "a_ainv": (a @ a.inverse()).to_tensor_flat12(),
        "ainv_a": (a.inverse() @ a).to_tensor_flat12(),
        "inv_ab": (a @ b).inverse().to_tensor_flat12(),
        "binv_ainv": (b.inverse() @ a.inverse()).to_tensor_flat12(),
    }


@given(quaternions, vectors, quaternions, vectors)
def test_compose_and_inverse_identities(qa, ta, qb, tb):
    out = _group_identities(qa, ta, qb, tb)
    identity = np.asarray(Rigid.identity((BATCH,)).to_tensor_flat12())
    np.testing.assert_allclose(out["a_ainv"], identity, atol=1e-4)
    np.testing.assert_allclose(out["ainv_a"], identity, atol=1e-4)
    np.testing.assert_allclose(out["inv_ab"], out["binv_ainv"], atol=1e-4)


@jax.jit
def _apply_checks(qa, ta, qb, tb, v):
    a, b, x = _rigid(qa, ta), _rigid(qb, tb), _v(v)
    y = _v(v[::-1])
    return {
        "ab_x": (a @ b).apply(x).to_array(),
        "a_b_x": a.apply(b.apply(x)).to_array(),
        "matmul_x": (a @ x).to_array(),
        "a_x": a.apply(x).to_array(),
        "round_trip": a.apply_inverse(a.apply(x)).to_array(),
        "inv_apply": a.inverse().apply(x).to_array(),
        "apply_inv": a.apply_inverse(x).to_array(),
        "dist_before": x.squared_distance(y),
        "dist_after": a.apply(x).squared_distance(a.apply(y)),
    }


@given(quaternions, vectors, quaternions, vectors, vectors)
def test_apply_composition_inverse_and_isometry(qa, ta, qb, tb, v):
    out = _apply_checks(qa, ta, qb, tb, v)
    # Composition applies the right operand first.
    np.testing.assert_allclose(out["ab_x"], out["a_b_x"], atol=1e-4)
    np.testing.assert_allclose(out["matmul_x"], out["a_x"])
    # apply_inverse undoes apply, and equals applying the inverse.
    np.testing.assert_allclose(out["round_trip"], v, atol=1e-4)
    np.testing.assert_allclose(out["inv_apply"], out["apply_inv"], atol=1e-4)
    # Rigid motions preserve distances.
    np.testing.assert_allclose(out["dist_after"], out["dist_before"], rtol=1e-4, atol=1e-3)


@jax.jit
def _local_coordinates(p_neg_x, p_origin, p_xy):
    neg_x, origin, xy = _v(p_neg_x), _v(p_origin), _v(p_xy)
    frame = Rigid.from_3_points(neg_x, origin, xy)
    return [frame.apply_inverse(p).to_array() for p in (origin, neg_x, xy)]


@given(vectors, vectors, vectors)
def test_from_3_points_puts_points_where_documented(p_neg_x, p_origin, p_xy):
    u, w = p_origin - p_neg_x, p_xy - p_origin
    # Skip (nearly) collinear triples, whose frame is ill-defined.
    norm_u = np.linalg.norm(u, axis=-1)
    keep = (norm_u > 0.5) & (np.linalg.norm(np.cross(u, w), axis=-1) > 0.5 * norm_u)
    local_origin, local_neg_x, local_xy = (np.asarray(p)[keep] for p in _local_coordinates(p_neg_x, p_origin, p_xy))
    np.testing.assert_allclose(local_origin, 0.0, atol=1e-4)
    assert (local_neg_x[:, 0] < 0).all()
    np.testing.assert_allclose(local_neg_x[:, 1:], 0.0, atol=2e-3)
    np.testing.assert_allclose(local_xy[:, 2], 0.0, atol=2e-3)
    assert (local_xy[:, 1] > 0).all()


@jax.jit
def _array_round_trips(q, t):
    a = _rigid(q, t)
    return {
        "flat12": a.to_tensor_flat12(),
        "flat12_back": Rigid.from_tensor_flat12(a.to_tensor_flat12()).to_tensor_flat12(),
        "4x4": a.to_array4x4(),
        "4x4_back": Rigid.from_array4x4(a.to_array4x4()).to_tensor_flat12(),
        "rot": a.rot.to_array(),
        "rot_back": Rot3.from_array(a.rot.to_array()).to_array(),
        "trans": a.trans.to_array(),
    }


@given(quaternions, vectors)
def test_array_round_trips(q, t):
    out = _array_round_trips(q, t)
    np.testing.assert_array_equal(out["flat12_back"], out["flat12"])
    np.testing.assert_array_equal(out["4x4_back"], out["flat12"])
    np.testing.assert_array_equal(out["rot_back"], out["rot"])
    m = np.asarray(out["4x4"])
    np.testing.assert_array_equal(m[:, 3], np.broadcast_to([0, 0, 0, 1], (BATCH, 4)))
    np.testing.assert_array_equal(m[:, :3, 3], out["trans"])
    np.testing.assert_array_equal(m[:, :3, :3], out["rot"])


def test_flat12_layout_is_row_major_rotation_then_translation():
    r = Rigid.from_tensor_flat12(jnp.arange(12.0))
    assert float(r.rot.xy) == 1.0 and float(r.rot.yx) == 3.0 and float(r.trans.x) == 9.0
    np.testing.assert_array_equal(r.rot.to_array(), np.arange(9.0).reshape(3, 3))


def test_compose_rotation_equals_compose_with_zero_translation():
    a = _rigid(jnp.array([0.3, -0.2, 0.5, 0.1]), jnp.array([1.0, 2.0, 3.0]))
    r = Rot3.from_quaternion(jnp.array([0.9, 0.1, 0.0, -0.4]))
    np.testing.assert_allclose(
        a.compose_rotation(r).to_tensor_flat12(), (a @ Rigid(r, Vec3.zeros())).to_tensor_flat12(), atol=1e-6
    )


# ---------------------------------------------------------------------------------------
# The structure module's quaternion update.
# ---------------------------------------------------------------------------------------


@jax.jit
def _pre_compose_vs_composition(q, t, upd):
    a = _rigid(q, t)
    new_q, new_t, new_r = quat_affine_pre_compose(a.rot.to_quaternion(), a.trans, a.rot, upd)
    update_rot = Rot3.from_quaternion(jnp.concatenate([jnp.ones_like(upd[:, :1]), upd[:, :3]], axis=-1))
    expected = a @ Rigid(update_rot, _v(upd[:, 3:]))
    return {
        "new_q": new_q,
        "new": Rigid(new_r, new_t).to_tensor_flat12(),
        "expected": expected.to_tensor_flat12(),
        "new_r": new_r.to_array(),
        "rot_of_new_q": Rot3.from_quaternion(new_q).to_array(),
    }


@given(quaternions, vectors, updates)
def test_pre_compose_applies_update_in_local_frame(q, t, upd):
    out = _pre_compose_vs_composition(q, t, upd)
    np.testing.assert_allclose(np.linalg.norm(out["new_q"], axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out["new"], out["expected"], atol=1e-4)
    np.testing.assert_allclose(out["new_r"], out["rot_of_new_q"], atol=1e-6)


def test_pre_compose_with_zero_update_is_identity():
    q = jnp.array([[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]])
    rot = Rot3.from_quaternion(q)
    t = _v(jnp.array([[1.0, 2.0, 3.0], [-1.0, 0.0, 4.0]]))
    new_q, new_t, new_r = quat_affine_pre_compose(q, t, rot, jnp.zeros((2, 6)))
    np.testing.assert_allclose(new_q, q, atol=1e-7)
    np.testing.assert_allclose(new_t.to_array(), t.to_array())
    np.testing.assert_allclose(new_r.to_array(), rot.to_array(), atol=1e-7)


# ---------------------------------------------------------------------------------------
# Vectors, norms, pytrees and transformations.
# ---------------------------------------------------------------------------------------


def test_vector_algebra():
    a, b = _v(jnp.array([1.0, 2.0, 3.0])), _v(jnp.array([-2.0, 0.5, 4.0]))
    np.testing.assert_allclose((a + b).to_array(), [-1, 2.5, 7])
    np.testing.assert_allclose((a - b).to_array(), [3, 1.5, -1])
    np.testing.assert_allclose((2 * a).to_array(), [2, 4, 6])
    np.testing.assert_allclose((a * 2).to_array(), [2, 4, 6])
    np.testing.assert_allclose((a / 2).to_array(), [0.5, 1, 1.5])
    np.testing.assert_allclose((-a).to_array(), [-1, -2, -3])
    assert float(a.dot(b)) == pytest.approx(11.0)
    np.testing.assert_allclose(a.cross(b).to_array(), np.cross([1, 2, 3], [-2, 0.5, 4]))
    assert float(a.norm()) == pytest.approx(np.sqrt(14.0))
    np.testing.assert_allclose(a.normalize().to_array(), np.array([1, 2, 3]) / np.sqrt(14.0), rtol=1e-6)
    # numpy arrays on the left broadcast instead of building object arrays.
    ones = jnp.ones(2)
    scaled = np.array([1.0, 2.0], np.float32) * Vec3(ones, ones, ones)
    assert isinstance(scaled, Vec3)
    np.testing.assert_allclose(scaled.x, [1.0, 2.0])


def test_robust_norm_matches_alphafold_and_has_finite_gradient():
    zero = Vec3.zeros()
    assert float(zero.robust_norm()) == pytest.approx(1e-4)  # sqrt(1e-8)
    v = _v(jnp.array([3.0, 4.0, 0.0]))
    assert float(v.robust_norm()) == pytest.approx(np.sqrt(25.0 + 1e-8))
    assert float(v.robust_norm(epsilon=1.0)) == pytest.approx(np.sqrt(26.0))
    np.testing.assert_allclose(zero.normalize().to_array(), 0.0)
    grad = jax.grad(lambda x: Vec3(x, x, x).robust_norm())(0.0)
    assert np.isfinite(grad)


def test_arbitrary_leading_dims_and_broadcasting():
    q, pts = _normal(2, 3, 4), _normal(2, 3, 5, 3)

    @jax.jit
    def transform(q, pts):
        frames = Rigid(Rot3.from_quaternion(q), Vec3.zeros((2, 3)))[..., None]
        return frames.apply(_v(pts)).to_array(), Rot3.from_quaternion(q).to_array()

    out, rot = transform(q, pts)
    assert out.shape == (2, 3, 5, 3)
    np.testing.assert_allclose(out, np.einsum("abij,abnj->abni", rot, pts), atol=1e-5)
    assert Rot3.from_quaternion(q).shape == (2, 3)
    assert Rigid.identity((4, 2)).to_array4x4().shape == (4, 2, 4, 4)
    assert Rigid.identity((2, 3))[..., None][0].shape == (3, 1)


def test_pytree_jit_vmap_grad():
    rigid = _rigid(_normal(6, 4), _normal(6, 3))
    assert len(jax.tree_util.tree_leaves(rigid)) == 12
    points = _v(_normal(6, 3))

    @jax.jit
    def round_trip(r, p):
        return (r @ r.inverse() @ r).apply_inverse(r.apply(p))

    np.testing.assert_allclose(round_trip(rigid, points).to_array(), points.to_array(), atol=1e-4)

    per_row = jax.jit(jax.vmap(lambda r, p: r.apply(p)))(rigid, points)
    np.testing.assert_allclose(per_row.to_array(), rigid.apply(points).to_array(), atol=1e-6)

    @jax.jit
    @jax.grad
    def grad_trans(trans: Vec3):
        return jnp.sum(Rigid(rigid.rot, trans).apply(points).x)

    g = grad_trans(rigid.trans)
    assert isinstance(g, Vec3)
    np.testing.assert_allclose(g.x, np.ones(6), atol=1e-6)
    np.testing.assert_allclose(g.y, np.zeros(6), atol=1e-6)

    # |R|_F^2 = 3 for every quaternion, so its gradient vanishes.
    g = jax.jit(jax.grad(lambda q: jnp.sum(Rot3.from_quaternion(q).to_array() ** 2)))(_normal(6, 4))
    np.testing.assert_allclose(g, 0.0, atol=1e-4)


def test_stop_rot_gradient_blocks_rotation_only():
    def loss(q, t):
        r = _rigid(q, t).stop_rot_gradient()
        return jnp.sum(r.apply(_v(jnp.ones(3))).to_array())

    gq, gt = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.array([0.9, 0.1, -0.2, 0.3]), jnp.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(gq, 0.0)
    np.testing.assert_allclose(gt, 1.0)


def test_scale_translation_map_and_shape_errors():
    r = Rigid(Rot3.identity(), _v(jnp.array([1.0, 2.0, 3.0]))).scale_translation(10.0)
    np.testing.assert_allclose(r.trans.to_array(), [10, 20, 30])
    assert r.map(lambda x: x[None]).shape == (1,)
    with pytest.raises(ValueError):
        Vec3.from_array(jnp.zeros((2, 4)))
    with pytest.raises(ValueError):
        Rot3.from_array(jnp.zeros((2, 3)))
    with pytest.raises(ValueError):
        Rigid.from_array4x4(jnp.zeros((3, 3)))
