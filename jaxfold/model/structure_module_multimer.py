"""AlphaFold-Multimer's structure module (DeepMind `folding_multimer.py`, v2.3.2), official parameter names:

    structure_module/
      single_layer_norm, initial_projection, pair_layer_norm,
      fold_iteration/                      (one set of weights shared by all `num_layer` iterations)
        invariant_point_attention/{q_scalar_projection, k_scalar_projection, v_scalar_projection,
            q_point_projection/point_projection, k_point_projection/point_projection,
            v_point_projection/point_projection, attention_2d, output_projection, //trainable_point_weights}
        attention_layer_norm, transition, transition_1, transition_2, transition_layer_norm,
        quat_rigid/rigid,
        rigid_sidechain/...                (the monomer `MultiRigidSidechain`, same names)

Differences from the monomer module (`structure_module.py`): separate query/key/value projections with
`[heads, points]`-shaped weights; IPA in `[query, key, head]` layout with the 1/sqrt(3) logit scale applied
after the mask; backbone frames carried as rotation matrices (not quaternions), updated by a quaternion
`(1, b, c, d)` normalised with `rsqrt(max(eps, |q|^2))` and composed on the right; `traj` and `final_rigids`
are `[..., 3, 4]` (rotation | translation in Angstrom); masks come from `aatype` and `seq_mask` alone.
Everything runs in float32. The same as the monomer module, and reused from it: the side chains
(`MultiRigidSidechain`), the residual, transition and layer norms around IPA (`ipa_residual_and_transition`)
and the one-weight-set scan over the iterations (`fold_iterations`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxfold.common import all_atom
from jaxfold.common.geometry import Rigid, Rot3, Vec3
from jaxfold.model.primitives import LayerNorm, Linear, final_init
from jaxfold.model.structure_module import (
    IPA_MASK_VALUE,
    MultiRigidSidechain,
    fold_iterations,
    ipa_residual_and_transition,
)
from jaxfold.parallel.dap import dropout_rng_refs, vary_like


def rot_from_quaternion(w, x, y, z, epsilon: float = 1e-6) -> Rot3:
    """`geometry.Rot3Array.from_quaternion(..., normalize=True)`: normalise with rsqrt(max(eps, |q|^2))."""
    inv_norm = jax.lax.rsqrt(jnp.maximum(epsilon, w**2 + x**2 + y**2 + z**2))
    w, x, y, z = w * inv_norm, x * inv_norm, y * inv_norm, z * inv_norm
    return Rot3(
        1 - 2 * (jnp.square(y) + jnp.square(z)),
        2 * (x * y - w * z),
        2 * (x * z + w * y),
        2 * (x * y + w * z),
        1 - 2 * (jnp.square(x) + jnp.square(z)),
        2 * (y * z - w * x),
        2 * (x * z - w * y),
        2 * (y * z + w * x),
        1 - 2 * (jnp.square(x) + jnp.square(y)),
    )


def rigid_to_array(rigid: Rigid) -> jax.Array:
    """Rigid `[...]` -> `[..., 3, 4]` (rotation matrix | translation), `Rigid3Array.to_array`."""
    return jnp.concatenate([rigid.rot.to_array(), rigid.trans.to_array()[..., None]], axis=-1)


class PointProjection(nn.Module):
    """`inputs [N, c]` -> points in the global frame, Vec3 `[N, heads, points]` (Haiku `point_projection`)."""

    num_points: tuple[int, int]  # (heads, points per head)

    @nn.compact
    def __call__(self, inputs: jax.Array, rigid: Rigid) -> Vec3:
        num_head, num_point = self.num_points
        local = Linear((num_head, 3 * num_point), name="point_projection")(inputs)
        local = Vec3(*jnp.split(local, 3, axis=-1))
        return rigid.map(lambda a: a[:, None, None]).apply(local)


class InvariantPointAttentionMultimer(nn.Module):
    """`folding_multimer.InvariantPointAttention`: inputs_1d `[N, c_s]`, inputs_2d `[N, N, c_z]`, mask `[N, 1]`,
    rigid Rigid `[N]` -> `[N, num_channel]`."""

    config: Any  # structure_module section
    global_config: Any
    dist_epsilon: float = 1e-8

    @nn.compact
    def __call__(self, inputs_1d, inputs_2d, mask, rigid: Rigid):
        c = self.config
        num_head = c.num_head
        point_variance = max(c.num_point_qk, 1) * 9.0 / 2
        point_weights = np.sqrt(1.0 / point_variance)
        raw_point_weights = self.param(
            "trainable_point_weights", nn.initializers.constant(np.log(np.exp(1.0) - 1.0)), (num_head,)
        )
        # jnp.logaddexp(x, 0), AlphaFold's softplus.
        point_weights = point_weights * jnp.logaddexp(raw_point_weights, jnp.zeros_like(raw_point_weights))

        q_point = PointProjection((num_head, c.num_point_qk), name="q_point_projection")(inputs_1d, rigid)
        k_point = PointProjection((num_head, c.num_point_qk), name="k_point_projection")(inputs_1d, rigid)
        diff = q_point.map(lambda a: a[:, None]) - k_point.map(lambda a: a[None, :])
        dist2 = diff.dot(diff)  # [N_q, N_k, H, P]
        attn_logits = -0.5 * jnp.sum(point_weights[:, None] * dist2, axis=-1)

        scalar_weights = np.sqrt(1.0 / max(c.num_scalar_qk, 1))
        q_scalar = Linear((num_head, c.num_scalar_qk), use_bias=False, name="q_scalar_projection")(inputs_1d)
        k_scalar = Linear((num_head, c.num_scalar_qk), use_bias=False, name="k_scalar_projection")(inputs_1d)
        q_scalar = q_scalar * scalar_weights
        attn_logits = attn_logits + jnp.einsum("qhc,khc->qkh", q_scalar, k_scalar)
        attn_logits = attn_logits + Linear(num_head, name="attention_2d")(inputs_2d)

        mask_2d = mask * jnp.swapaxes(mask, -1, -2)
        attn_logits = attn_logits - IPA_MASK_VALUE * (1.0 - mask_2d[..., None])
        attn_logits = attn_logits * np.sqrt(1.0 / 3)  # three logit terms
        attn = jax.nn.softmax(attn_logits, axis=-2)  # over keys

        v_scalar = Linear((num_head, c.num_scalar_v), use_bias=False, name="v_scalar_projection")(inputs_1d)
        result_scalar = jnp.einsum("qkh,khc->qhc", attn, v_scalar)
        v_point = PointProjection((num_head, c.num_point_v), name="v_point_projection")(inputs_1d, rigid)
        result_point = v_point.map(lambda a: jnp.sum(attn[..., None] * a[None], axis=-3))  # [N_q, H, P_v]

        num_res = inputs_1d.shape[0]
        result_scalar = result_scalar.reshape(num_res, -1)
        result_point = result_point.map(lambda a: a.reshape(num_res, -1))
        local = rigid.map(lambda a: a[:, None]).apply_inverse(result_point)
        point_norms = jnp.sqrt(jnp.maximum(local.dot(local), self.dist_epsilon**2))
        attention_over_2d = jnp.einsum("ijh,ijc->ihc", attn, inputs_2d).reshape(num_res, -1)
        final_act = jnp.concatenate([result_scalar, local.x, local.y, local.z, point_norms, attention_over_2d], axis=-1)
        return Linear(c.num_channel, initializer=final_init(self.global_config), name="output_projection")(final_act)


class QuatRigid(nn.Module):
    """`act [N, c]` -> Rigid update `[N]` from (b, c, d, tx, ty, tz): quaternion (1, b, c, d). Haiku `quat_rigid`."""

    global_config: Any

    @nn.compact
    def __call__(self, act) -> Rigid:
        flat = Linear(6, initializer=final_init(self.global_config), name="rigid")(act)
        qx, qy, qz, tx, ty, tz = (flat[..., i] for i in range(6))
        return Rigid(rot_from_quaternion(jnp.ones_like(qx), qx, qy, qz), Vec3(tx, ty, tz))


class FoldIterationMultimer(nn.Module):
    """One multimer structure-module iteration (Haiku `fold_iteration`). Scan body:
    `({'act', 'rigid'}, None-broadcast inputs) -> (new activations, {'rigid', 'sc'})`; the rigid translation is
    in units of `position_scale` Angstrom; the carried rotation has its gradient stopped."""

    config: Any
    global_config: Any
    is_training: bool = False

    @nn.compact
    def __call__(self, activations, sequence_mask, initial_act, static_feat_2d, aatype):
        c, gc = self.config, self.global_config
        rigid = activations["rigid"]
        act = activations["act"]
        attn = InvariantPointAttentionMultimer(c, gc, name="invariant_point_attention")(
            act, static_feat_2d, sequence_mask, rigid
        )
        act = ipa_residual_and_transition(self, act, attn)
        rigid = rigid @ QuatRigid(gc, name="quat_rigid")(act)
        sc = MultiRigidSidechain(c.sidechain, gc, name="rigid_sidechain")(
            rigid.scale_translation(c.position_scale), [act, initial_act], aatype
        )
        outputs = {"rigid": rigid, "sc": sc}
        return {"act": act, "rigid": rigid.stop_rot_gradient()}, outputs


class StructureModuleMultimer(nn.Module):
    """The multimer structure module head (Haiku `structure_module`).

    representations: `single [N, c_s]`, `pair [N, N, c_z]`; batch: `seq_mask [N]`, `aatype [N]`.
    Returns `act [N, c_s]`, `traj [L, N, 3, 4]` (Angstrom), `final_rigids [N, 3, 4]`, `sidechains`
    (`angles_sin_cos`, `unnormalized_angles_sin_cos [L, N, 7, 2]`, `atom_pos [L, N, 14, 3]`,
    `frames [L, N, 8, 3, 4]`), `final_atom14_positions [N, 14, 3]`, `final_atom14_mask [N, 14]`,
    `final_atom_positions [N, 37, 3]`, `final_atom_mask [N, 37]`.
    """

    config: Any
    global_config: Any
    is_training: bool = False

    @nn.compact
    def __call__(self, representations: Mapping[str, jax.Array], batch: Mapping[str, jax.Array]) -> dict:
        c, gc = self.config, self.global_config
        single = jnp.asarray(representations["single"], jnp.float32)
        pair = jnp.asarray(representations["pair"], jnp.float32)
        seq_mask = jnp.asarray(batch["seq_mask"], jnp.float32)
        if seq_mask.ndim != 1:
            raise ValueError(f"seq_mask must be [N_res]; got shape {seq_mask.shape}")
        aatype = jnp.asarray(batch["aatype"], jnp.int32)
        act = LayerNorm(gc.kernels, name="single_layer_norm")(single)
        initial_act = act
        act = Linear(c.num_channel, name="initial_projection")(act)
        act_2d = LayerNorm(gc.kernels, name="pair_layer_norm")(pair)

        activations = {"act": act, "rigid": Rigid.identity(seq_mask.shape)}
        activations = vary_like(activations, act, act_2d, seq_mask, *dropout_rng_refs(self, self.is_training, gc))
        fold_stack = fold_iterations(FoldIterationMultimer, c, gc, self.is_training)
        activations, output = fold_stack(activations, seq_mask[:, None], initial_act, act_2d, aatype)

        traj = rigid_to_array(output["rigid"].scale_translation(c.position_scale))
        sc = output["sc"]
        sidechains = {
            "angles_sin_cos": sc["angles_sin_cos"],
            "unnormalized_angles_sin_cos": sc["unnormalized_angles_sin_cos"],
            "atom_pos": sc["atom_pos"].to_array(),
            "frames": rigid_to_array(sc["frames"]),
        }
        masks = all_atom.make_atom14_masks(aatype)
        atom14_mask = masks["atom14_atom_exists"] * seq_mask[:, None]
        atom37_mask = masks["atom37_atom_exists"] * seq_mask[:, None]
        atom14_positions = sidechains["atom_pos"][-1]
        atom37_positions = all_atom.atom14_to_atom37(
            atom14_positions, masks["residx_atom37_to_atom14"], masks["atom37_atom_exists"]
        )
        atom37_positions = atom37_positions * atom37_mask[:, :, None]
        return {
            "act": activations["act"],
            "traj": traj,
            "sidechains": sidechains,
            "final_atom14_positions": atom14_positions,
            "final_atom14_mask": atom14_mask,
            "final_atom_positions": atom37_positions,
            "final_atom_mask": atom37_mask,
            "final_rigids": traj[-1],
        }
