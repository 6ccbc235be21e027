"""Rigid-body geometry as JAX pytrees: vectors, rotations and rigid transforms.

Each component is its own array (structure of arrays), so a batch of N x M frames is a
`Rigid` whose 12 leaves all have shape [N, M]. Writing out the 3x3 arithmetic as scalar
multiply-adds keeps the work in fp32 on the vector units rather than on matrix units
(tensor cores / MXU), which may run matmuls at reduced precision and would cost
coordinate accuracy. It is also what AlphaFold's `r3` module does, and the operation
order below follows it so results agree with DeepMind's to rounding.

Conventions (AlphaFold's):
  * `Rot3` is row-major: field `xy` is row x, column y; `R.apply(v) = R @ v`.
  * `Rigid(rot, trans)` maps local to global: `x_global = rot @ x_local + trans`;
    `a @ b` applies `b` first.
  * Quaternions are arrays [..., 4] with the real part first, (w, x, y, z), Hamilton
    product, as in AlphaFold's `quat_affine`.

All shapes in docstrings are the shapes of the component arrays; any leading batch
dimensions work, and every operation broadcasts like its component arrays do.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array
Scalar = float | Array

# Regulariser inside the square root of AlphaFold's robust norm (r3.vecs_robust_norm).
ROBUST_NORM_EPSILON = 1e-8


@struct.dataclass
class Vec3:
    """Vectors [...] stored as three arrays x, y, z of the same (broadcastable) shape."""

    x: Array
    y: Array
    z: Array

    # Make numpy hand `ndarray * Vec3` to Vec3.__rmul__ instead of building an
    # object array element by element.
    __array_ufunc__ = None

    # --- construction / conversion -------------------------------------------------
    @classmethod
    def zeros(cls, shape=(), dtype=jnp.float32) -> Vec3:
        """All-zero vectors of component shape `shape`."""
        z = jnp.zeros(shape, dtype)
        return cls(z, z, z)

    @classmethod
    def from_array(cls, array: Array) -> Vec3:
        """[..., 3] array -> Vec3 [...]."""
        if array.shape[-1] != 3:
            raise ValueError(f"Expected a trailing axis of size 3, got shape {array.shape}.")
        return cls(array[..., 0], array[..., 1], array[..., 2])

    def to_array(self) -> Array:
        """Vec3 [...] -> [..., 3] array."""
        return jnp.stack([self.x, self.y, self.z], axis=-1)

    @property
    def shape(self) -> tuple[int, ...]:
        return jnp.shape(self.x)

    @property
    def dtype(self):
        return jnp.result_type(self.x)

    def map(self, fn) -> Vec3:
        """Applies `fn` to each component array (e.g. reshape, stop_gradient)."""
        return jax.tree_util.tree_map(fn, self)

    def __getitem__(self, index) -> Vec3:
        return self.map(lambda a: a[index])

    # --- arithmetic ----------------------------------------------------------------
    def __add__(self, other: Vec3) -> Vec3:
        return Vec3(self.x + other.x, self.y + other.y, self.z + other.z)

    def __sub__(self, other: Vec3) -> Vec3:
        return Vec3(self.x - other.x, self.y - other.y, self.z - other.z)

    def __neg__(self) -> Vec3:
        return Vec3(-self.x, -self.y, -self.z)

    def __mul__(self, scale: Scalar) -> Vec3:
        return Vec3(self.x * scale, self.y * scale, self.z * scale)

    def __rmul__(self, scale: Scalar) -> Vec3:
        return Vec3(scale * self.x, scale * self.y, scale * self.z)

    def __truediv__(self, denom: Scalar) -> Vec3:
        return Vec3(self.x / denom, self.y / denom, self.z / denom)

    def dot(self, other: Vec3) -> Array:
        """Dot product [...]."""
        return self.x * other.x + self.y * other.y + self.z * other.z

    def cross(self, other: Vec3) -> Vec3:
        """Cross product self x other."""
        return Vec3(
            self.y * other.z - self.z * other.y,
            self.z * other.x - self.x * other.z,
            self.x * other.y - self.y * other.x,
        )

    def norm2(self) -> Array:
        """Squared norm [...]."""
        return jnp.square(self.x) + jnp.square(self.y) + jnp.square(self.z)

    def norm(self) -> Array:
        """Euclidean norm [...]; its gradient is NaN at the zero vector."""
        return jnp.sqrt(self.norm2())

    def robust_norm(self, epsilon: float = ROBUST_NORM_EPSILON) -> Array:
        """sqrt(x^2 + y^2 + z^2 + epsilon), AlphaFold's r3.vecs_robust_norm.

        Never zero, so dividing by it and differentiating it stay finite.
        """
        return jnp.sqrt(self.norm2() + epsilon)

    def normalize(self, epsilon: float = ROBUST_NORM_EPSILON) -> Vec3:
        """self / robust_norm(epsilon) (r3.vecs_robust_normalize); zero stays zero."""
        n = self.robust_norm(epsilon)
        return Vec3(self.x / n, self.y / n, self.z / n)

    def squared_distance(self, other: Vec3) -> Array:
        """|self - other|^2 [...] (r3.vecs_squared_distance)."""
        return jnp.square(self.x - other.x) + jnp.square(self.y - other.y) + jnp.square(self.z - other.z)


@struct.dataclass
class Rot3:
    """3x3 matrices [...] stored as nine arrays, row-major (`xy` = row x, column y)."""

    xx: Array
    xy: Array
    xz: Array
    yx: Array
    yy: Array
    yz: Array
    zx: Array
    zy: Array
    zz: Array

    __array_ufunc__ = None

    # --- construction / conversion -------------------------------------------------
    @classmethod
    def identity(cls, shape=(), dtype=jnp.float32) -> Rot3:
        """Identity rotations of component shape `shape`."""
        one, zero = jnp.ones(shape, dtype), jnp.zeros(shape, dtype)
        return cls(one, zero, zero, zero, one, zero, zero, zero, one)

    @classmethod
    def from_array(cls, array: Array) -> Rot3:
        """[..., 3, 3] array (array[..., row, col]) -> Rot3 [...]."""
        if array.shape[-2:] != (3, 3):
            raise ValueError(f"Expected trailing axes (3, 3), got shape {array.shape}.")
        return cls(*(array[..., i, j] for i in range(3) for j in range(3)))

    def to_array(self) -> Array:
        """Rot3 [...] -> [..., 3, 3] array."""
        rows = [
            jnp.stack(row, axis=-1)
            for row in ((self.xx, self.xy, self.xz), (self.yx, self.yy, self.yz), (self.zx, self.zy, self.zz))
        ]
        return jnp.stack(rows, axis=-2)

    @classmethod
    def from_two_vectors(cls, e0_unnormalized: Vec3, e1_unnormalized: Vec3) -> Rot3:
        """Rotation whose x axis is along e0 and whose xy plane contains e1.

        Gram-Schmidt as AlphaFold's r3.rots_from_two_vecs: e0 = normalize(e0);
        e1 = normalize(e1 - (e1 . e0) e0); e2 = e0 x e1. The unit vectors are the
        matrix columns. Uses the robust (epsilon) normalisation, so degenerate inputs
        give zeros rather than NaN.
        """
        e0 = e0_unnormalized.normalize()
        c = e1_unnormalized.dot(e0)
        e1 = Vec3(e1_unnormalized.x - c * e0.x, e1_unnormalized.y - c * e0.y, e1_unnormalized.z - c * e0.z).normalize()
        e2 = e0.cross(e1)
        return cls(e0.x, e1.x, e2.x, e0.y, e1.y, e2.y, e0.z, e1.z, e2.z)

    @classmethod
    def from_quaternion(cls, quaternion: Array, normalize: bool = True) -> Rot3:
        """Rotation of quaternion [..., 4] (w, x, y, z), as AlphaFold's quat_to_rot.

        With normalize=True the quaternion is first divided by its plain L2 norm, as
        QuatAffine does on construction (no epsilon: a zero quaternion gives NaN).
        """
        if normalize:
            quaternion = quaternion / jnp.linalg.norm(quaternion, axis=-1, keepdims=True)
        w, x, y, z = (quaternion[..., i] for i in range(4))
        ww, xx, yy, zz = w * w, x * x, y * y, z * z
        wx, wy, wz = w * x, w * y, w * z
        xy, xz, yz = x * y, x * z, y * z
        return cls(
            ww + xx - yy - zz,
            2 * (xy - wz),
            2 * (xz + wy),
            2 * (xy + wz),
            ww - xx + yy - zz,
            2 * (yz - wx),
            2 * (xz - wy),
            2 * (yz + wx),
            ww - xx - yy + zz,
        )

    def to_quaternion(self) -> Array:
        """Unit quaternion [..., 4] (w first) of this rotation; sign is arbitrary.

        As AlphaFold's quat_affine.rot_to_quat: the eigenvector of the largest
        eigenvalue of the symmetric 4x4 matrix K/3 built from the entries (Bar-Itzhack),
        which is robust for any rotation angle. `eigh` is slow on GPU; call it on
        small batches or on the host.
        """
        k = [
            [self.xx + self.yy + self.zz, self.zy - self.yz, self.xz - self.zx, self.yx - self.xy],
            [self.zy - self.yz, self.xx - self.yy - self.zz, self.xy + self.yx, self.xz + self.zx],
            [self.xz - self.zx, self.xy + self.yx, self.yy - self.xx - self.zz, self.yz + self.zy],
            [self.yx - self.xy, self.xz + self.zx, self.yz + self.zy, self.zz - self.xx - self.yy],
        ]
        k = (1.0 / 3.0) * jnp.stack([jnp.stack(row, axis=-1) for row in k], axis=-2)
        _, eigenvectors = jnp.linalg.eigh(k)  # eigenvalues ascending
        return eigenvectors[..., -1]

    @property
    def shape(self) -> tuple[int, ...]:
        return jnp.shape(self.xx)

    def map(self, fn) -> Rot3:
        """Applies `fn` to each of the nine component arrays."""
        return jax.tree_util.tree_map(fn, self)

    def __getitem__(self, index) -> Rot3:
        return self.map(lambda a: a[index])

    # --- algebra -------------------------------------------------------------------
    def inverse(self) -> Rot3:
        """Inverse of a rotation = its transpose."""
        return Rot3(self.xx, self.yx, self.zx, self.xy, self.yy, self.zy, self.xz, self.yz, self.zz)

    transpose = inverse

    def apply(self, v: Vec3) -> Vec3:
        """R @ v."""
        return Vec3(
            self.xx * v.x + self.xy * v.y + self.xz * v.z,
            self.yx * v.x + self.yy * v.y + self.yz * v.z,
            self.zx * v.x + self.zy * v.y + self.zz * v.z,
        )

    def apply_inverse(self, v: Vec3) -> Vec3:
        """R^T @ v."""
        return Vec3(
            self.xx * v.x + self.yx * v.y + self.zx * v.z,
            self.xy * v.x + self.yy * v.y + self.zy * v.z,
            self.xz * v.x + self.yz * v.y + self.zz * v.z,
        )

    def compose(self, other: Rot3) -> Rot3:
        """self @ other (apply `other` first), column by column as r3.rots_mul_rots."""
        c0 = self.apply(Vec3(other.xx, other.yx, other.zx))
        c1 = self.apply(Vec3(other.xy, other.yy, other.zy))
        c2 = self.apply(Vec3(other.xz, other.yz, other.zz))
        return Rot3(c0.x, c1.x, c2.x, c0.y, c1.y, c2.y, c0.z, c1.z, c2.z)

    def __matmul__(self, other):
        """Rot3 @ Rot3 -> Rot3 (compose); Rot3 @ Vec3 -> Vec3 (apply)."""
        if isinstance(other, Rot3):
            return self.compose(other)
        if isinstance(other, Vec3):
            return self.apply(other)
        return NotImplemented


@struct.dataclass
class Rigid:
    """Proper rigid transforms [...]: x -> rot @ x + trans."""

    rot: Rot3
    trans: Vec3

    __array_ufunc__ = None

    # --- construction / conversion -------------------------------------------------
    @classmethod
    def identity(cls, shape=(), dtype=jnp.float32) -> Rigid:
        """Identity transforms of component shape `shape`."""
        return cls(Rot3.identity(shape, dtype), Vec3.zeros(shape, dtype))

    @classmethod
    def from_3_points(cls, point_on_neg_x_axis: Vec3, origin: Vec3, point_on_xy_plane: Vec3) -> Rigid:
        """Frame with `origin` at its origin, `point_on_neg_x_axis` on its negative x
        axis and `point_on_xy_plane` in its xy plane (y >= 0 side).

        AlphaFold Suppl. Alg. 21 / r3.rigids_from_3_points. Beware: AlphaFold's residue
        backbone frame is *not* from_3_points(N, CA, C). It has CA at the origin, C on
        the +x axis and N in the xy plane with y > 0 (the layout of the literature
        positions); atom37_to_frames gets it as from_3_points(C, CA, N) followed by a
        flip of the x and z axes, which equals `Rigid(Rot3.from_two_vectors(C - CA,
        N - CA), CA)` exactly.
        """
        rot = Rot3.from_two_vectors(origin - point_on_neg_x_axis, point_on_xy_plane - origin)
        return cls(rot, origin)

    @classmethod
    def from_array4x4(cls, array: Array) -> Rigid:
        """[..., 4, 4] homogeneous matrices -> Rigid [...] (bottom row ignored)."""
        if array.shape[-2:] != (4, 4):
            raise ValueError(f"Expected trailing axes (4, 4), got shape {array.shape}.")
        rot = Rot3(*(array[..., i, j] for i in range(3) for j in range(3)))
        trans = Vec3(array[..., 0, 3], array[..., 1, 3], array[..., 2, 3])
        return cls(rot, trans)

    def to_array4x4(self) -> Array:
        """Rigid [...] -> [..., 4, 4] homogeneous matrices."""
        top = jnp.concatenate([self.rot.to_array(), self.trans.to_array()[..., None]], axis=-1)
        bottom = jnp.broadcast_to(jnp.array([0.0, 0.0, 0.0, 1.0], top.dtype), top.shape[:-2] + (1, 4))
        return jnp.concatenate([top, bottom], axis=-2)

    @classmethod
    def from_tensor_flat12(cls, array: Array) -> Rigid:
        """[..., 12] = (xx, xy, xz, yx, yy, yz, zx, zy, zz, tx, ty, tz) -> Rigid [...].

        The layout of AlphaFold's r3.rigids_to_tensor_flat12 (e.g. the
        'rigidgroups_gt_frames' feature).
        """
        if array.shape[-1] != 12:
            raise ValueError(f"Expected a trailing axis of size 12, got {array.shape}.")
        c = [array[..., i] for i in range(12)]
        return cls(Rot3(*c[:9]), Vec3(*c[9:]))

    def to_tensor_flat12(self) -> Array:
        """Rigid [...] -> [..., 12] (rotation row-major, then translation)."""
        r, t = self.rot, self.trans
        return jnp.stack([r.xx, r.xy, r.xz, r.yx, r.yy, r.yz, r.zx, r.zy, r.zz, t.x, t.y, t.z], axis=-1)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.rot.shape

    def map(self, fn) -> Rigid:
        """Applies `fn` to each of the 12 component arrays."""
        return jax.tree_util.tree_map(fn, self)

    def __getitem__(self, index) -> Rigid:
        return self.map(lambda a: a[index])

    # --- algebra -------------------------------------------------------------------
    def apply(self, v: Vec3) -> Vec3:
        """rot @ v + trans (local -> global)."""
        return self.rot.apply(v) + self.trans

    def apply_inverse(self, v: Vec3) -> Vec3:
        """rot^T @ (v - trans) (global -> local), as QuatAffine.invert_point."""
        return self.rot.apply_inverse(v - self.trans)

    def inverse(self) -> Rigid:
        """Group inverse (rot^T, -rot^T @ trans), as r3.invert_rigids."""
        inv_rot = self.rot.inverse()
        return Rigid(inv_rot, -inv_rot.apply(self.trans))

    def compose(self, other: Rigid) -> Rigid:
        """self @ other: apply `other` first (r3.rigids_mul_rigids)."""
        return Rigid(self.rot.compose(other.rot), self.trans + self.rot.apply(other.trans))

    def compose_rotation(self, rot: Rot3) -> Rigid:
        """self @ Rigid(rot, 0): rotate in the local frame first (r3.rigids_mul_rots)."""
        return Rigid(self.rot.compose(rot), self.trans)

    def __matmul__(self, other):
        """Rigid @ Rigid -> Rigid (compose); Rigid @ Vec3 -> Vec3 (apply)."""
        if isinstance(other, Rigid):
            return self.compose(other)
        if isinstance(other, Vec3):
            return self.apply(other)
        return NotImplemented

    def scale_translation(self, factor: Scalar) -> Rigid:
        """Same rotation, translation multiplied by `factor` (e.g. nm <-> Angstrom)."""
        return Rigid(self.rot, self.trans * factor)

    def stop_rot_gradient(self) -> Rigid:
        """Blocks gradients through the rotation only (AlphaFold does this between
        structure-module iterations for training stability)."""
        return Rigid(self.rot.map(jax.lax.stop_gradient), self.trans)


# ---------------------------------------------------------------------------------------
# Quaternion helpers for the structure module's backbone update (QuatAffine).
# ---------------------------------------------------------------------------------------


def quat_multiply(q1: Array, q2: Array) -> Array:
    """Hamilton product q1 * q2 of quaternions [..., 4] (w first)."""
    w1, x1, y1, z1 = (q1[..., i] for i in range(4))
    w2, x2, y2, z2 = (q2[..., i] for i in range(4))
    return jnp.stack(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ],
        axis=-1,
    )


def quat_multiply_by_vec(q: Array, v: Array) -> Array:
    """q * (0, v): product of quaternions [..., 4] with pure-vector quaternions [..., 3]."""
    w, x, y, z = (q[..., i] for i in range(4))
    a, b, c = (v[..., i] for i in range(3))
    return jnp.stack(
        [-x * a - y * b - z * c, w * a + y * c - z * b, w * b - x * c + z * a, w * c + x * b - y * a], axis=-1
    )


def quat_affine_pre_compose(
    quaternion: Array, translation: Vec3, rotation: Rot3, update: Array
) -> tuple[Array, Vec3, Rot3]:
    """Applies a backbone update in the local frame, as AlphaFold's QuatAffine.pre_compose.

    Args:
      quaternion: current (unit) quaternions [..., 4], w first.
      translation: current translations Vec3 [...].
      rotation: rotation matching `quaternion`, Rot3 [...]. It is passed separately
        because AlphaFold may carry a stop-gradient copy of it.
      update: [..., 6]: (b, c, d) so that the rotation update is the (unnormalised)
        quaternion (1, b, c, d), then the translation update (tx, ty, tz) in the
        local frame.

    Returns:
      (new_quaternion [..., 4] normalised, new_translation Vec3, new_rotation Rot3),
      with new_quaternion = normalize(q + q * (0, b, c, d)) = normalize(q * (1, b, c, d))
      and new_translation = translation + rotation @ t_update.
    """
    new_quaternion = quaternion + quat_multiply_by_vec(quaternion, update[..., :3])
    new_quaternion = new_quaternion / jnp.linalg.norm(new_quaternion, axis=-1, keepdims=True)
    trans_update = rotation.apply(Vec3(update[..., 3], update[..., 4], update[..., 5]))
    new_translation = translation + trans_update
    new_rotation = Rot3.from_quaternion(new_quaternion, normalize=False)
    return new_quaternion, new_translation, new_rotation
