"""The structure module (Jumper et al. 2021, Suppl. Algs. 20-24): IPA, backbone updates, side chains.

Mirrors DeepMind's `folding.py` (v2.3.2 monomer) with the same Haiku module and parameter names, so the
parameter tree maps 1:1 onto the official files:

    structure_module/
      single_layer_norm, initial_projection, pair_layer_norm,
      fold_iteration/                      (ONE set of weights, shared by all `num_layer` iterations)
        invariant_point_attention/{q_scalar, kv_scalar, q_point_local, kv_point_local, attention_2d,
                                   output_projection, //trainable_point_weights}
        attention_layer_norm, transition, transition_1, transition_2, transition_layer_norm,
        affine_update,
        rigid_sidechain/{input_projection, input_projection_1, resblock1, resblock2, resblock1_1,
                         resblock2_1, unnormalized_angles}

Backbone frames travel between iterations as AlphaFold's affine tensor `[N, 7]` (unit quaternion, real part
first, then translation in nanometre-like units, i.e. Angstrom / `position_scale`). Like `QuatAffine`,
each iteration rebuilds the rotation matrix from that quaternion *without* renormalising it, applies the
update in the local frame (`pre_compose`, which renormalises), and hands the next iteration a quaternion
whose gradient is stopped (AlphaFold's `stop_gradient` on the rotation between layers).

All structure-module arithmetic runs in float32 whatever `global_config.dtype` is: inputs are cast on
entry (with `global_config.chunk_size` > 0 the pair is cast one chunk of rows at a time, see IPA).
Geometry uses `jaxfold.common.geometry` (structure-of-arrays, no matmuls) so results agree with
DeepMind's to float rounding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxfold.common import all_atom
from jaxfold.common.geometry import Rigid, Rot3, Vec3, quat_affine_pre_compose
from jaxfold.model.chunking import chunked
from jaxfold.model.primitives import LayerNorm, Linear, apply_linear, dropout, final_init, layer_norm
from jaxfold.parallel.dap import dropout_rng_refs, vary_like

# AlphaFold's IPA masks logits with `-1e5 * (1 - mask_2d)` (not the trunk's -1e9).
IPA_MASK_VALUE = 1e5


# ---------------------------------------------------------------------------------------------------------
# Affine tensor <-> (quaternion, Rigid) helpers.
# ---------------------------------------------------------------------------------------------------------


def identity_affine(num_residues: int, dtype=jnp.float32) -> jax.Array:
    """`[N, 7]` affine tensor of identity frames: quaternion (1, 0, 0, 0), zero translation."""
    quaternion = jnp.tile(jnp.asarray([[1.0, 0.0, 0.0, 0.0]], dtype), [num_residues, 1])
    return jnp.concatenate([quaternion, jnp.zeros([num_residues, 3], dtype)], axis=-1)


def affine_to_rigid(affine: jax.Array) -> Rigid:
    """`[..., 7]` affine tensor -> Rigid, as `QuatAffine.from_tensor` (rotation from the quaternion as
    stored, NOT renormalised)."""
    rot = Rot3.from_quaternion(affine[..., :4], normalize=False)
    trans = Vec3(affine[..., 4], affine[..., 5], affine[..., 6])
    return Rigid(rot, trans)


def quaternion_translation_to_affine(quaternion: jax.Array, translation: Vec3) -> jax.Array:
    """(quaternion `[..., 4]`, Vec3 `[...]`) -> affine tensor `[..., 7]` (`QuatAffine.to_tensor`)."""
    return jnp.concatenate([quaternion, translation.to_array()], axis=-1)


def _expand_last(rigid: Rigid) -> Rigid:
    """Rigid `[N]` -> `[N, 1]` so it broadcasts over a trailing point axis (AlphaFold's `extra_dims=1`)."""
    return rigid.map(lambda a: a[..., None])


def _l2_normalize(x: jax.Array, axis: int = -1, epsilon: float = 1e-12) -> jax.Array:
    """AlphaFold's folding.l2_normalize: `x / sqrt(max(sum x^2, eps))`."""
    return x / jnp.sqrt(jnp.maximum(jnp.sum(x**2, axis=axis, keepdims=True), epsilon))


def _maybe_dropout(module: nn.Module, x: jax.Array, rate: float, is_training: bool) -> jax.Array:
    """AlphaFold's `prng.safe_dropout`: only when training and not `global_config.deterministic`."""
    if not is_training or rate == 0.0 or module.global_config.deterministic:
        return x
    return dropout(x, rate, module.make_rng("dropout"))


# ---------------------------------------------------------------------------------------------------------
# Invariant point attention.
# ---------------------------------------------------------------------------------------------------------


class InvariantPointAttention(nn.Module):
    """Invariant point attention (Suppl. Alg. 22). Haiku name `invariant_point_attention`.

    `__call__(inputs_1d [N, c_s], inputs_2d [N, N, c_z], mask [N, 1], rigid: Rigid [N], pair_norm=None)
    -> [N, num_channel]`. `rigid` holds the backbone frames (rotation + translation in the units of the
    affine tensor); only its rotation matrix and translation are used, as in AlphaFold.

    `pair_norm`: `(scale, offset)` of the structure module's `pair_layer_norm`; when given, `inputs_2d` is
    the raw pair (any dtype, e.g. the trunk's bfloat16) and is layer-normed (statistics in float32) slice by
    slice here, so no float32 copy of the whole pair exists. Otherwise `inputs_2d` is already normalised.

    With `global_config.chunk_size` > 0 the attention (logits `[H, C, N]`, point distances `[H, C, N, P]`,
    the pair bias and the three results) is computed for `C = chunk_size` query rows at a time: memory
    O(C * N * (H * P + c_z)) instead of O(N^2 * (H * P + c_z)). Keys and values `[N, H, c]` are small and
    shared by all chunks. Unchunked (0 or "auto") it is the whole-array computation.
    """

    config: Any  # the structure_module section of the model config
    global_config: Any
    dist_epsilon: float = 1e-8

    @nn.compact
    def __call__(
        self,
        inputs_1d: jax.Array,
        inputs_2d: jax.Array,
        mask: jax.Array,
        rigid: Rigid,
        pair_norm: tuple[jax.Array, jax.Array] | None = None,
    ) -> jax.Array:
        c, gc = self.config, self.global_config
        num_res = inputs_1d.shape[0]
        num_head = c.num_head
        num_scalar_qk, num_point_qk = c.num_scalar_qk, c.num_point_qk
        num_scalar_v, num_point_v = c.num_scalar_v, c.num_point_v
        assert num_scalar_qk > 0 and num_point_qk > 0 and num_point_v > 0
        if inputs_2d.shape[:2] != (num_res, num_res):
            raise ValueError(f"IPA: pair of shape {inputs_2d.shape} does not match {num_res} residues")

        # Scalar queries [N, H, S_qk], keys [N, H, S_qk] and values [N, H, S_v].
        q_scalar = Linear(num_head * num_scalar_qk, name="q_scalar")(inputs_1d)
        q_scalar = q_scalar.reshape(num_res, num_head, num_scalar_qk)
        kv_scalar = Linear(num_head * (num_scalar_v + num_scalar_qk), name="kv_scalar")(inputs_1d)
        kv_scalar = kv_scalar.reshape(num_res, num_head, num_scalar_v + num_scalar_qk)
        k_scalar, v_scalar = kv_scalar[..., :num_scalar_qk], kv_scalar[..., num_scalar_qk:]

        frames = _expand_last(rigid)

        # Query points: local -> global, x/y/z each [N, H, P_qk].
        q_point_local = Linear(num_head * 3 * num_point_qk, name="q_point_local")(inputs_1d)
        q_point_global = frames.apply(Vec3(*jnp.split(q_point_local, 3, axis=-1)))
        q_point = q_point_global.map(lambda a: a.reshape(num_res, num_head, num_point_qk))

        # Key and value points: local -> global, [N, H, P_qk + P_v], then split.
        kv_point_local = Linear(num_head * 3 * (num_point_qk + num_point_v), name="kv_point_local")(inputs_1d)
        kv_point_global = frames.apply(Vec3(*jnp.split(kv_point_local, 3, axis=-1)))
        kv_point = kv_point_global.map(lambda a: a.reshape(num_res, num_head, num_point_qk + num_point_v))
        k_point = kv_point.map(lambda a: a[..., :num_point_qk])
        v_point = kv_point.map(lambda a: a[..., num_point_qk:])

        # Each logit term gets a third of the variance (queries and keys assumed iid N(0, 1)).
        scalar_variance = max(num_scalar_qk, 1) * 1.0
        point_variance = max(num_point_qk, 1) * 9.0 / 2
        num_logit_terms = 3
        scalar_weights = np.sqrt(1.0 / (num_logit_terms * scalar_variance))
        point_weights = np.sqrt(1.0 / (num_logit_terms * point_variance))
        attention_2d_weights = np.sqrt(1.0 / num_logit_terms)

        trainable_point_weights = jax.nn.softplus(
            self.param(
                "trainable_point_weights",
                nn.initializers.constant(np.log(np.exp(1.0) - 1.0)),  # softplus^-1(1)
                (num_head,),
            )
        )
        point_weights = point_weights * trainable_point_weights[:, None]  # [H, 1]
        attention_2d_w, attention_2d_b = Linear(num_head, num_input=inputs_2d.shape[-1], name="attention_2d")()

        # Heads first: [H, N, P].
        def heads_first(v: Vec3) -> Vec3:
            return v.map(lambda a: jnp.swapaxes(a, -2, -3))

        k_point, v_point = heads_first(k_point), heads_first(v_point)
        v = jnp.swapaxes(v_scalar, -2, -3)
        k = jnp.swapaxes(k_scalar, -2, -3)
        mask_k = jnp.swapaxes(mask, -1, -2)  # [1, N]

        def attend(q_scalar_rows, q_x, q_y, q_z, mask_rows, pair_rows):
            """Query rows R: q_scalar `[R, H, S_qk]`, q points `[R, H, P_qk]` each, mask `[R, 1]`, pair
            `[R, N, c_z]` -> scalar `[R, H*S_v]`, global points x/y/z `[R, H*P_v]`, pair `[R, H*c_z]`."""
            rows = q_scalar_rows.shape[0]
            q_pt = heads_first(Vec3(q_x, q_y, q_z))
            dist2 = (
                jnp.square(q_pt.x[:, :, None, :] - k_point.x[:, None, :, :])
                + jnp.square(q_pt.y[:, :, None, :] - k_point.y[:, None, :, :])
                + jnp.square(q_pt.z[:, :, None, :] - k_point.z[:, None, :, :])
            )  # [H, R, N, P]
            attn_qk_point = -0.5 * jnp.sum(point_weights[:, None, None, :] * dist2, axis=-1)

            q = jnp.swapaxes(scalar_weights * q_scalar_rows, -2, -3)
            attn_qk_scalar = jnp.matmul(q, jnp.swapaxes(k, -2, -1))
            attn_logits = attn_qk_scalar + attn_qk_point

            pair_rows = pair_rows.astype(jnp.float32)
            if pair_norm is not None:
                pair_rows = layer_norm(pair_rows, *pair_norm, kernels=gc.kernels)
            attention_2d = apply_linear(pair_rows, attention_2d_w, attention_2d_b)
            attention_2d = jnp.transpose(attention_2d, [2, 0, 1])
            attn_logits = attn_logits + attention_2d_weights * attention_2d

            mask_2d = mask_rows * mask_k
            attn_logits = attn_logits - IPA_MASK_VALUE * (1.0 - mask_2d)

            attn = jax.nn.softmax(attn_logits)  # [H, R, N]

            result_scalar = jnp.matmul(attn, v)  # [H, R, S_v]
            # Points: explicit multiply + reduce, as AlphaFold (keeps it fp32 on matrix units).
            result_point_global = v_point.map(
                lambda vx: jnp.sum(attn[:, :, :, None] * vx[:, None, :, :], axis=-2)
            )  # [H, R, P_v]

            result_scalar = jnp.swapaxes(result_scalar, -2, -3).reshape(rows, num_head * num_scalar_v)
            result_point_global = result_point_global.map(
                lambda a: jnp.swapaxes(a, -2, -3).reshape(rows, num_head * num_point_v)
            )
            result_attention_over_2d = jnp.einsum("hij,ijc->ihc", attn, pair_rows).reshape(rows, -1)
            return (
                result_scalar,
                result_point_global.x,
                result_point_global.y,
                result_point_global.z,
                result_attention_over_2d,
            )

        chunk_size = gc.chunk_size
        if isinstance(chunk_size, int) and 0 < chunk_size < num_res:
            # The pair is gathered row by row inside the loop rather than handed to `chunked` as a sliced
            # argument, which would pad (copy) the whole [N, N, c_z] pair when chunk_size does not divide N.
            def attend_rows(q_scalar_rows, q_x, q_y, q_z, mask_rows, row_ids):
                return attend(q_scalar_rows, q_x, q_y, q_z, mask_rows, jnp.take(inputs_2d, row_ids, axis=0))

            results = chunked(attend_rows, chunk_size)(
                q_scalar, q_point.x, q_point.y, q_point.z, mask, jnp.arange(num_res)
            )
        else:
            results = attend(q_scalar, q_point.x, q_point.y, q_point.z, mask, inputs_2d)
        result_scalar, point_x, point_y, point_z, result_attention_over_2d = results

        result_point_local = frames.apply_inverse(Vec3(point_x, point_y, point_z))
        point_norm = jnp.sqrt(
            self.dist_epsilon
            + jnp.square(result_point_local.x)
            + jnp.square(result_point_local.y)
            + jnp.square(result_point_local.z)
        )

        # AlphaFold's order: scalar, point x, y, z, point norm, pair.
        final_act = jnp.concatenate(
            [
                result_scalar,
                result_point_local.x,
                result_point_local.y,
                result_point_local.z,
                point_norm,
                result_attention_over_2d,
            ],
            axis=-1,
        )
        return Linear(c.num_channel, initializer=final_init(self.global_config), name="output_projection")(final_act)


# ---------------------------------------------------------------------------------------------------------
# Side chains.
# ---------------------------------------------------------------------------------------------------------


class MultiRigidSidechain(nn.Module):
    """Torsion angles -> rigid-group frames -> atom14 positions (Suppl. Algs. 20 l. 11, 24).

    Haiku name `rigid_sidechain`. `__call__(rigid [N] (Angstrom), representations_list, aatype [N])` ->
    dict `angles_sin_cos [N, 7, 2]`, `unnormalized_angles_sin_cos [N, 7, 2]`, `atom_pos` Vec3 `[N, 14]`,
    `frames` Rigid `[N, 8]`.
    """

    config: Any  # structure_module.sidechain
    global_config: Any

    @nn.compact
    def __call__(self, rigid: Rigid, representations_list, aatype: jax.Array) -> dict:
        c = self.config
        # One `input_projection` per input (Haiku names input_projection, input_projection_1); summed,
        # which equals a Linear of the concatenation.
        act = sum(
            Linear(c.num_channel, name="input_projection" + (f"_{i}" if i else ""))(jax.nn.relu(x))
            for i, x in enumerate(representations_list)
        )

        for i in range(c.num_residual_block):
            suffix = f"_{i}" if i else ""
            old_act = act
            act = Linear(c.num_channel, initializer="relu", name="resblock1" + suffix)(jax.nn.relu(act))
            act = Linear(c.num_channel, initializer=final_init(self.global_config), name="resblock2" + suffix)(
                jax.nn.relu(act)
            )
            act = act + old_act

        num_res = act.shape[0]
        unnormalized_angles = Linear(14, name="unnormalized_angles")(jax.nn.relu(act))
        unnormalized_angles = unnormalized_angles.reshape(num_res, 7, 2)
        angles = _l2_normalize(unnormalized_angles, axis=-1)

        all_frames_to_global = all_atom.torsion_angles_to_frames(aatype, rigid, angles)
        pred_positions = all_atom.frames_and_literature_positions_to_atom14_pos(aatype, all_frames_to_global)
        return {
            "angles_sin_cos": angles,
            "unnormalized_angles_sin_cos": unnormalized_angles,
            "atom_pos": pred_positions,
            "frames": all_frames_to_global,
        }


# ---------------------------------------------------------------------------------------------------------
# One structure-module iteration.
# ---------------------------------------------------------------------------------------------------------


def ipa_residual_and_transition(fold_iteration: nn.Module, act: jax.Array, attn: jax.Array) -> jax.Array:
    """What a fold iteration does between IPA and the backbone update (Suppl. Alg. 20 lines 6-9), the same
    in the monomer and the multimer module: `act + attn` `[N, c_s]`, dropout, `attention_layer_norm`; then
    the transition (`num_layer_in_transition` Linears named `transition`, `transition_1`, ..., ReLU between
    them) with its residual, dropout and `transition_layer_norm`. The sub-modules are created in the
    scope of `fold_iteration` (call from inside its compact method), which gives the config, global config
    and `is_training`."""
    c, gc, is_training = fold_iteration.config, fold_iteration.global_config, fold_iteration.is_training
    act = _maybe_dropout(fold_iteration, act + attn, c.dropout, is_training)
    act = LayerNorm(gc.kernels, name="attention_layer_norm")(act)

    input_act = act
    for i in range(c.num_layer_in_transition):
        last = i == c.num_layer_in_transition - 1
        act = Linear(
            c.num_channel,
            initializer=final_init(gc) if last else "relu",
            name="transition" + (f"_{i}" if i else ""),
        )(act)
        if not last:
            act = jax.nn.relu(act)
    act = _maybe_dropout(fold_iteration, act + input_act, c.dropout, is_training)
    return LayerNorm(gc.kernels, name="transition_layer_norm")(act)


def fold_iterations(fold_iteration_cls, config, global_config, is_training: bool) -> nn.Module:
    """The structure module's `config.num_layer` iterations (scope `fold_iteration`) as one `nn.scan` with ONE
    set of weights (`variable_broadcast='params'`: no layer axis, as in the official files), a fresh
    dropout key per iteration and every input but the carry broadcast."""
    return nn.scan(
        fold_iteration_cls,
        variable_broadcast="params",
        split_rngs={"params": False, "dropout": True},
        in_axes=nn.broadcast,
        length=config.num_layer,
    )(config, global_config, is_training=is_training, name="fold_iteration")


class FoldIteration(nn.Module):
    """One iteration of the structure module (Suppl. Alg. 20 lines 6-21). Haiku name `fold_iteration`.

    `__call__(activations, sequence_mask, initial_act, static_feat_2d, aatype, pair_norm=None)` with
    `activations = {'act': [N, c_s], 'affine': [N, 7]}`, `sequence_mask [N, 1]`, `initial_act [N, c_s]`
    (the layer-normed single representation), `static_feat_2d [N, N, c_z]` (the layer-normed pair, or the
    raw pair when `pair_norm = (scale, offset)` of `pair_layer_norm` is given: see IPA), `aatype [N]`.
    Returns `(new_activations, outputs)`: `new_activations` as the input (quaternion gradient stopped),
    `outputs = {'affine': [N, 7], 'sc': MultiRigidSidechain dict}` (the affine before the stop-gradient,
    translation unscaled; side chains in Angstrom).

    The signature `(carry, *broadcast) -> (carry, outputs)` lets `nn.scan` drive it. Dropout as AlphaFold's:
    on the whole activation after each residual add (IPA, transition), when `is_training` and not
    `global_config.deterministic`; needs the `dropout` RNG then.
    """

    config: Any  # structure_module section
    global_config: Any
    is_training: bool = False
    update_affine: bool = True

    @nn.compact
    def __call__(
        self,
        activations: Mapping[str, jax.Array],
        sequence_mask: jax.Array,
        initial_act: jax.Array,
        static_feat_2d: jax.Array,
        aatype: jax.Array,
        pair_norm: tuple[jax.Array, jax.Array] | None = None,
    ):
        c, gc = self.config, self.global_config
        affine = activations["affine"]
        quaternion = affine[..., :4]
        rigid = affine_to_rigid(affine)

        act = activations["act"]
        attn = InvariantPointAttention(c, gc, name="invariant_point_attention")(
            act, static_feat_2d, sequence_mask, rigid, pair_norm
        )
        act = ipa_residual_and_transition(self, act, attn)

        translation, rotation = rigid.trans, rigid.rot
        if self.update_affine:
            # Suppl. Alg. 23 "Backbone update": quaternion (1, b, c, d) and a translation, in the local frame.
            affine_update = Linear(6, initializer=final_init(gc), name="affine_update")(act)
            quaternion, translation, rotation = quat_affine_pre_compose(
                quaternion, translation, rotation, affine_update
            )

        sc = MultiRigidSidechain(c.sidechain, gc, name="rigid_sidechain")(
            Rigid(rotation, translation * c.position_scale), [act, initial_act], aatype
        )

        outputs = {"affine": quaternion_translation_to_affine(quaternion, translation), "sc": sc}
        new_activations = {
            "act": act,
            "affine": quaternion_translation_to_affine(jax.lax.stop_gradient(quaternion), translation),
        }
        return new_activations, outputs


# ---------------------------------------------------------------------------------------------------------
# The structure module.
# ---------------------------------------------------------------------------------------------------------


class StructureModule(nn.Module):
    """The structure module head (Suppl. Alg. 20). Haiku name `structure_module`.

    `__call__(representations, batch)`:
      representations: `single [N, c_s]`, `pair [N, N, c_z]`.
      batch: `seq_mask [N]`, `aatype [N]`, `atom14_atom_exists [N, 14]`, `residx_atom37_to_atom14 [N, 37]`,
        `atom37_atom_exists [N, 37]` (`residx_atom14_to_atom37` is accepted and unused, as in AlphaFold).
    Returns (AlphaFold's `StructureModule.__call__` keys, with `act` for `representations/structure_module`):
      `act [N, c_s]` (input of the pLDDT head), `traj [L, N, 7]` (quaternion + translation in Angstrom),
      `final_affines [N, 7]`, `sidechains` (`angles_sin_cos`, `unnormalized_angles_sin_cos [L, N, 7, 2]`,
      `atom_pos` Vec3 `[L, N, 14]`, `frames` Rigid `[L, N, 8]`), `final_atom14_positions [N, 14, 3]`,
      `final_atom14_mask [N, 14]`, `final_atom_positions [N, 37, 3]`, `final_atom_mask [N, 37]`.

    The single `fold_iteration` is applied `num_layer` times with shared weights via `nn.scan`
    (`variable_broadcast='params'`), so its parameters carry no layer axis, as in the official files.

    With `global_config.chunk_size` > 0 the pair stays in its own dtype (bfloat16 from a bfloat16 trunk) and
    is never layer-normed whole: each IPA normalises the query-row chunks it attends from, so no float32
    `[N, N, c_z]` array exists (a 10,000-residue pair would be 51 GB in float32). Unchunked, the pair is cast
    to float32 and normalised once, as AlphaFold does.
    """

    config: Any  # structure_module section
    global_config: Any
    is_training: bool = False

    @nn.compact
    def __call__(self, representations: Mapping[str, jax.Array], batch: Mapping[str, jax.Array]) -> dict:
        c, gc = self.config, self.global_config
        single = jnp.asarray(representations["single"], jnp.float32)
        pair = representations["pair"]
        seq_mask = jnp.asarray(batch["seq_mask"], jnp.float32)
        assert seq_mask.ndim == 1
        sequence_mask = seq_mask[:, None]
        aatype = batch["aatype"]

        act = LayerNorm(gc.kernels, name="single_layer_norm")(single)
        initial_act = act
        act = Linear(c.num_channel, name="initial_projection")(act)
        if isinstance(gc.chunk_size, int) and gc.chunk_size > 0:
            act_2d = jnp.asarray(pair)
            pair_norm = LayerNorm(gc.kernels, num_channels=pair.shape[-1], name="pair_layer_norm")()
        else:
            act_2d = LayerNorm(gc.kernels, name="pair_layer_norm")(jnp.asarray(pair, jnp.float32))
            pair_norm = None

        activations = {"act": act, "affine": identity_affine(single.shape[0])}
        # Under shard_map the carry must vary over every axis the loop body mixes in (see `vary_like`).
        activations = vary_like(activations, act, act_2d, seq_mask, *dropout_rng_refs(self, self.is_training, gc))
        fold_stack = fold_iterations(FoldIteration, c, gc, self.is_training)
        activations, output = fold_stack(activations, sequence_mask, initial_act, act_2d, aatype, pair_norm)

        position_scale = jnp.asarray([1.0] * 4 + [c.position_scale] * 3, jnp.float32)
        traj = output["affine"] * position_scale
        sidechains = output["sc"]

        atom14_positions = sidechains["atom_pos"][-1].to_array()  # [N, 14, 3]
        atom37_positions = all_atom.atom14_to_atom37(
            atom14_positions, batch["residx_atom37_to_atom14"], batch["atom37_atom_exists"]
        )
        atom37_positions = atom37_positions * jnp.asarray(batch["atom37_atom_exists"], jnp.float32)[:, :, None]
        return {
            "act": activations["act"],
            "traj": traj,
            "sidechains": sidechains,
            "final_atom14_positions": atom14_positions,
            "final_atom14_mask": batch["atom14_atom_exists"],
            "final_atom_positions": atom37_positions,
            "final_atom_mask": batch["atom37_atom_exists"],
            "final_affines": traj[-1],
        }
