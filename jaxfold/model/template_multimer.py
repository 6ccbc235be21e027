"""AlphaFold-Multimer's template embedders (DeepMind `modules_multimer.TemplateEmbedding`,
`SingleTemplateEmbedding`, `template_embedding_1d`).

Pair embedding: for each template, nine feature groups (distogram, pseudo-beta pair mask, aatype of j, aatype
of i, the three backbone unit-vector components, backbone pair mask, the layer-normed query pair) each go
through their own linear map (`template_pair_embedding_0..8`) and are summed; distance-derived features are
masked to intra-chain pairs (templates are per chain). Then the template pair stack (multiplications first),
a LayerNorm, and the embeddings of all template slots are averaged (empty slots included: they are not
no-ops), ReLU, `output_linear` to the pair width. Unlike the monomer embedder there is no attention over
templates.

1-d embedding: template aatype one-hot, sin/cos of the four chi angles and their masks -> two linear layers
-> extra MSA rows `[N_templ, N_res, c_m]` with the chi-1 mask as their MSA mask.

Geometry follows DeepMind's `geometry` package (Rot3Array/Vec3Array), operation by operation, because the
unit-vector feature on the pair diagonal is round-off noise that `normalized()` amplifies (see
shared/reference_multimer/README.md, Hazards).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxfold.common import all_atom
from jaxfold.common import residue_constants as rc
from jaxfold.common.geometry import Rigid, Rot3, Vec3
from jaxfold.model.distogram import dgram_from_positions
from jaxfold.model.primitives import LayerNorm, Linear
from jaxfold.model.template import apply_template_pair_stack, template_pair_stack
from jaxfold.parallel.dap import NO_DAP, Dap, dropout_rng_refs, vary_like

# `geometry.Vec3Array.norm`/`normalized` default epsilon: |v| = sqrt(max(|v|^2, eps^2)).
VEC_EPSILON = 1e-6


def _norm(v: Vec3, epsilon: float = VEC_EPSILON) -> jax.Array:
    return jnp.sqrt(jnp.maximum(v.x * v.x + v.y * v.y + v.z * v.z, epsilon**2))


def _normalized(v: Vec3, epsilon: float = VEC_EPSILON) -> Vec3:
    return v / _norm(v, epsilon)


def _cross(a: Vec3, b: Vec3) -> Vec3:
    return Vec3(a.y * b.z - a.z * b.y, a.z * b.x - a.x * b.z, a.x * b.y - a.y * b.x)


def _positions(array: jax.Array) -> Vec3:
    return Vec3(array[..., 0], array[..., 1], array[..., 2])


def backbone_rigid(positions: jax.Array, mask: jax.Array) -> tuple[Rigid, jax.Array]:
    """`folding_multimer.make_backbone_affine`: atom37 positions `[N, 37, 3]`, mask `[N, 37]` -> frames `[N]`
    (CA origin, x towards C, N in the xy plane) and the N/CA/C mask `[N]`."""
    n, ca, c = (_positions(positions[:, rc.atom_order[a]]) for a in ("N", "CA", "C"))
    e0 = _normalized(c - ca)
    e1_raw = n - ca
    e1 = _normalized(e1_raw - e0 * e1_raw.dot(e0))
    e2 = _cross(e0, e1)
    rot = Rot3(e0.x, e1.x, e2.x, e0.y, e1.y, e2.y, e0.z, e1.z, e2.z)
    rigid_mask = mask[:, rc.atom_order["N"]] * mask[:, rc.atom_order["CA"]] * mask[:, rc.atom_order["C"]]
    return Rigid(rot, ca), rigid_mask.astype(jnp.float32)


def _dihedral_angle(a: Vec3, b: Vec3, c: Vec3, d: Vec3) -> jax.Array:
    """`geometry.dihedral_angle`."""
    v1, v2, v3 = a - b, b - c, d - c
    c1, c2 = _cross(v1, v2), _cross(v3, v2)
    c3 = _cross(c2, c1)
    return jnp.arctan2(c3.dot(v2), _norm(v2) * c1.dot(c2))


def compute_chi_angles(positions: jax.Array, mask: jax.Array, aatype: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`all_atom_multimer.compute_chi_angles`: `[N, 37, 3]`, `[N, 37]`, `[N]` -> chi angles and mask `[N, 4]`.

    Residue types beyond the 20 amino acids (X, gap) use the all-zero "unknown" row, as in AlphaFold.
    """
    # 20 amino acids plus the all-zero "unknown" row; indices beyond it clamp to it (jnp gather semantics).
    indices = np.concatenate([np.asarray(rc.chi_angles_atom_indices, np.int32), np.zeros((1, 4, 4), np.int32)])
    angle_mask_table = np.concatenate([np.asarray(rc.chi_angles_mask, np.float32), np.zeros((1, 4), np.float32)])
    aatype = jnp.clip(aatype, 0, indices.shape[0] - 1)
    atom_indices = jnp.asarray(indices)[aatype]  # [N, 4 chis, 4 atoms]
    gather = jax.vmap(lambda values, idx: values[idx])
    atoms = [_positions(gather(positions, atom_indices[..., i])) for i in range(4)]
    chi_angles = _dihedral_angle(*atoms)
    chi_mask = jnp.asarray(angle_mask_table)[aatype]
    atoms_mask = jnp.prod(gather(mask, atom_indices), axis=-1)
    return chi_angles, chi_mask * atoms_mask.astype(jnp.float32)


def template_embedding_1d(batch: dict, num_channel: int, dtype) -> tuple[jax.Array, jax.Array]:
    """Template rows for the MSA: `[N_templ, N_res, num_channel]` and their mask `[N_templ, N_res]`.

    Creates `template_single_embedding` and `template_projection` in the calling module's scope (the
    official names sit directly under `evoformer/`); call from inside a compact method.
    """
    aatype = batch["template_aatype"]
    chi_angles, chi_mask = jax.vmap(compute_chi_angles)(
        batch["template_all_atom_positions"], batch["template_all_atom_mask"], aatype
    )
    features = jnp.concatenate(
        [jax.nn.one_hot(aatype, 22), jnp.sin(chi_angles) * chi_mask, jnp.cos(chi_angles) * chi_mask, chi_mask], axis=-1
    ).astype(dtype)
    act = Linear(num_channel, initializer="relu", name="template_single_embedding")(features)
    act = Linear(num_channel, initializer="relu", name="template_projection")(jax.nn.relu(act))
    return act, chi_mask[:, :, 0].astype(dtype)


class SingleTemplateEmbedding(nn.Module):
    """One template -> `[N_res, N_res, num_channels]`. Scan body over templates: the carry is the running sum."""

    config: object  # embeddings_and_evoformer.template
    global_config: object
    is_training: bool = False
    dap: Dap = NO_DAP

    @nn.compact
    def __call__(self, carry, template, query_embedding, padding_mask_2d, multichain_mask_2d):
        c, gc = self.config, self.global_config
        dtype = query_embedding.dtype
        aatype = template["template_aatype"]
        positions = template["template_all_atom_positions"]
        atom_mask = template["template_all_atom_mask"]

        pseudo_beta, pseudo_beta_mask = all_atom.pseudo_beta_fn(aatype, positions, atom_mask)
        pseudo_beta_mask_2d = pseudo_beta_mask[:, None] * pseudo_beta_mask[None, :] * multichain_mask_2d
        dgram = dgram_from_positions(pseudo_beta, **c.dgram_features) * pseudo_beta_mask_2d[..., None]
        aatype_one_hot = jax.nn.one_hot(aatype, 22, dtype=dtype)

        rigid, backbone_mask = backbone_rigid(positions.astype(jnp.float32), atom_mask)
        points = rigid.trans
        # rigid[:, None].inverse().apply_to_point(points): frame i's view of CA j.
        inverse = rigid.inverse().map(lambda a: a[:, None])
        local = inverse.rot.apply(points) + inverse.trans
        unit = _normalized(local)
        backbone_mask_2d = backbone_mask[:, None] * backbone_mask[None, :] * multichain_mask_2d
        unit = [x * backbone_mask_2d for x in (unit.x, unit.y, unit.z)]

        query = LayerNorm(gc.kernels, name="query_embedding_norm")(query_embedding)
        # (feature, number of input dims of its Linear); each gets its own `template_pair_embedding_<i>`.
        features = [
            (dgram.astype(dtype), 1),
            (pseudo_beta_mask_2d.astype(dtype), 0),
            (aatype_one_hot[None, :, :], 1),
            (aatype_one_hot[:, None, :], 1),
            *[(u.astype(dtype), 0) for u in unit],
            (backbone_mask_2d.astype(dtype), 0),
            (query, 1),
        ]
        act = 0
        for i, (x, num_input_dims) in enumerate(features):
            act = act + self._embed(x, num_input_dims, f"template_pair_embedding_{i}", dtype)

        num_res = query_embedding.shape[0]
        act = jnp.broadcast_to(act, (num_res, num_res, c.num_channels)).astype(dtype)
        stack = template_pair_stack(
            c.template_pair_stack,
            gc,
            self.is_training,
            self.dap,
            name="template_embedding_iteration",
            multiplication_first=True,
        )
        act = apply_template_pair_stack(
            stack, self.dap, act, padding_mask_2d, *dropout_rng_refs(self, self.is_training, gc)
        )
        act = LayerNorm(gc.kernels, name="output_layer_norm")(act)
        return carry + act, None

    def _embed(self, x, num_input_dims: int, name: str, dtype):
        """AlphaFold's `Linear(num_channels, num_input_dims=n, initializer='relu')`; n = 0 scales a scalar map."""
        num_channels = self.config.num_channels
        if num_input_dims:
            return Linear(num_channels, initializer="relu", name=name)(x)
        weights, bias = Linear(num_channels, initializer="relu", num_input=(), num_input_dims=0, name=name)()
        return x[..., None] * weights.astype(dtype) + bias.astype(dtype)


class TemplateEmbedding(nn.Module):
    """All templates -> pair update `[N_res, N_res, c_z]`.

    query_embedding `[N_res, N_res, c_z]`; template_batch: `template_aatype [T, N]`,
    `template_all_atom_positions [T, N, 37, 3]`, `template_all_atom_mask [T, N, 37]`; padding_mask_2d
    `[N, N]` (query residues present); multichain_mask_2d `[N, N]` (same chain).
    """

    config: object
    global_config: object
    is_training: bool = False
    dap: Dap = NO_DAP

    @nn.compact
    def __call__(self, query_embedding, template_batch, padding_mask_2d, multichain_mask_2d):
        c, gc = self.config, self.global_config
        num_res, _, c_z = query_embedding.shape
        dtype = query_embedding.dtype
        templates = {
            k: template_batch[k] for k in ("template_aatype", "template_all_atom_positions", "template_all_atom_mask")
        }
        num_templates = templates["template_aatype"].shape[0]
        # A scan whose carry is the running sum, as AlphaFold's hk.scan: one template's pair stack is live at
        # a time, the sum is accumulated in template order, and DAP collectives keep one order on all devices.
        embed_all = nn.scan(
            SingleTemplateEmbedding,
            variable_broadcast="params",
            split_rngs={"params": False, "dropout": True},
            in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
            length=num_templates,
        )
        carry = jnp.zeros((num_res, num_res, c.num_channels), dtype)
        carry = vary_like(carry, query_embedding, templates, padding_mask_2d)
        summed, _ = embed_all(c, gc, self.is_training, self.dap, name="single_template_embedding")(
            carry, templates, query_embedding, padding_mask_2d.astype(dtype), multichain_mask_2d.astype(dtype)
        )
        embedding = jax.nn.relu(summed / num_templates)
        return Linear(c_z, initializer="relu", name="output_linear")(embedding)
