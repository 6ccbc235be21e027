"""Template pair embedding (Jumper et al. 2021, Suppl. Algs. 2 lines 7-13, 16, 17).

For every template: pair features (distogram of pseudo-beta positions, masks, both residues' aatype,
backbone unit vectors) -> linear `embedding2d` -> template pair stack -> LayerNorm. The query pair
representation then attends over templates at every (i, j) ("pointwise attention") and the result is
added to the pair representation by the caller. Templates share weights; they are processed one after
another with `nn.scan`, so only one template's pair stack is live at a time.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfold.common import residue_constants as rc
from jaxfold.common.geometry import Rigid, Vec3
from jaxfold.model.attention import Attention, mask_to_bias
from jaxfold.model.chunking import chunked, output_buffer, pair_rows_chunk
from jaxfold.model.distogram import dgram_between
from jaxfold.model.evoformer import (
    PAIR_UPDATES_EVOFORMER,
    PAIR_UPDATES_TEMPLATE,
    in_place_pair_updates,
    updates_in_place,
)
from jaxfold.model.inplace import add_in_place, pure
from jaxfold.model.primitives import LayerNorm, Linear, apply_linear, layer_norm
from jaxfold.model.stacks import residual_update, scanned_stack, split_stack_call
from jaxfold.model.transition import Transition
from jaxfold.model.triangle_attention import TriangleAttention
from jaxfold.model.triangle_multiplication import TriangleMultiplication
from jaxfold.parallel.dap import NO_DAP, Dap, dropout_rng_refs, vary_like

# Channels of `template_pair_features`: distogram 39, pseudo-beta mask 1, aatype 22 + 22, unit vector 3,
# backbone mask 1.
NUM_TEMPLATE_PAIR_FEATURES = 88


# Sub-module order of one template pair block: (name, class, split axis under DAP).
ATTENTION_FIRST = (
    ("triangle_attention_starting_node", TriangleAttention, 0),
    ("triangle_attention_ending_node", TriangleAttention, 1),
    ("triangle_multiplication_outgoing", TriangleMultiplication, 0),
    ("triangle_multiplication_incoming", TriangleMultiplication, 1),
    ("pair_transition", Transition, 1),
)
# AlphaFold-Multimer's `TemplateEmbeddingIteration`: multiplications first, as in the Evoformer.
MULTIPLICATION_FIRST = ATTENTION_FIRST[2:4] + ATTENTION_FIRST[0:2] + ATTENTION_FIRST[4:]


class TemplatePairBlock(nn.Module):
    """One template pair stack block: triangle attentions first, then multiplications, then transition
    (with `multiplication_first`, AlphaFold-Multimer's order: multiplications, attentions, transition).

    Scan body: `pair, None = block(pair, pair_mask)`; pair `[N_res, N_res, c_t]`, pair_mask whole.
    Under DAP the pair enters and leaves split along rows; row-wise updates (starting node, outgoing) run
    on row slices, column-wise ones (ending node, incoming, and the transition) on column slices.
    """

    config: object  # template.template_pair_stack
    global_config: object
    is_training: bool = False
    dap: Dap = NO_DAP
    multiplication_first: bool = False

    @nn.compact
    def __call__(self, pair, pair_mask):
        c, gc, dap = self.config, self.global_config, self.dap
        if updates_in_place(self, gc, self.is_training, dap):
            order = PAIR_UPDATES_EVOFORMER if self.multiplication_first else PAIR_UPDATES_TEMPLATE
            return in_place_pair_updates(c, gc, pair, pair_mask, order), None
        masks = {0: dap.scatter(pair_mask, 0), 1: dap.scatter(pair_mask, 1)}
        layout = 0  # the split axis of `pair`
        for name, cls, split in MULTIPLICATION_FIRST if self.multiplication_first else ATTENTION_FIRST:
            if split != layout:
                pair = dap.row_to_col(pair) if split == 1 else dap.col_to_row(pair)
                layout = split
            module = cls(c[name], gc, name=name) if cls is Transition else cls(c[name], gc, dap, name=name)
            pair = residual_update(module, self, pair, module(pair, masks[split]), self.is_training, dap, split)
        pair = dap.col_to_row(pair) if layout == 1 else pair
        return pair, None


class TemplatePairStack(nn.Module):
    """`num_block` template pair blocks; parameters stacked under `__layer_stack_no_state` as in the official files."""

    config: object
    global_config: object
    is_training: bool = False
    dap: Dap = NO_DAP

    @nn.compact
    def __call__(self, pair, pair_mask):
        """pair `[N_res, N_res, c_t]` and pair_mask whole (replicated); under DAP the stack runs on row
        slices of the pair padded to a multiple of the DAP size and the result is gathered back."""
        if not self.config.num_block:
            return pair
        stack = template_pair_stack(
            self.config, self.global_config, self.is_training, self.dap, name="__layer_stack_no_state"
        )
        return apply_template_pair_stack(
            stack, self.dap, pair, pair_mask, *dropout_rng_refs(self, self.is_training, self.global_config)
        )


def template_pair_stack(
    config, global_config, is_training: bool, dap: Dap, name: str, multiplication_first: bool = False
) -> nn.Module:
    """`config.num_block` scanned template pair blocks named `name` (parameters stacked on a leading axis)."""
    stack = scanned_stack(TemplatePairBlock, config.num_block, bool(global_config.use_remat))
    return stack(config, global_config, is_training, dap, multiplication_first, name=name)


def apply_template_pair_stack(stack: nn.Module, dap: Dap, pair, pair_mask, *vary_refs):
    """Run a scanned template pair stack on whole, replicated `pair [N_res, N_res, c_t]` and mask (split over
    devices under DAP, `split_stack_call`)."""
    (pair,) = split_stack_call(
        lambda arrays, masks: (stack(arrays[0], masks[0])[0],), dap, (pair,), (pair_mask,), *vary_refs
    )
    return pair


def template_backbone_unit_vectors(positions: jax.Array, backbone_mask_2d: jax.Array) -> list[jax.Array]:
    """AlphaFold's template "unit vector" features: 3 x `[N_res, N_res]`, zero where a backbone is incomplete.

    The frame is `quat_affine.make_transform_from_reference` (origin CA, x towards C, N in the xy-plane).
    AlphaFold builds that matrix as the global->local map but then uses it as a local->global rotation
    (`invert_point` applies its transpose), so the vector is `M (ca_j - ca_i)` with `M` the frame's
    local->global rotation. We reproduce that exactly; no official monomer preset turns the feature on.
    """
    n, ca, c = (positions[:, rc.atom_order[a]] for a in ("N", "CA", "C"))
    ca_v = Vec3(*jnp.moveaxis(ca, -1, 0))
    frames = Rigid.from_3_points(
        point_on_neg_x_axis=Vec3(*jnp.moveaxis(2 * ca - c, -1, 0)),
        origin=ca_v,
        point_on_xy_plane=Vec3(*jnp.moveaxis(n, -1, 0)),
    )
    rot = jax.tree_util.tree_map(lambda x: x[:, None], frames.rot)
    offsets = jax.tree_util.tree_map(lambda a, b: a[None, :] - b[:, None], ca_v, ca_v)
    vec = rot.apply(offsets)
    inv_distance = jax.lax.rsqrt(1e-6 + vec.x**2 + vec.y**2 + vec.z**2) * backbone_mask_2d
    return [vec.x * inv_distance, vec.y * inv_distance, vec.z * inv_distance]


def template_pair_features(
    template: dict, num_bins_config, use_unit_vector: bool, dtype, rows: dict | None = None
) -> tuple:
    """Concatenated template pair features `[N_rows, N_res, 88]` and the backbone mask `[N_rows, N_res]`.

    Channels: distogram (39), pseudo-beta pair mask (1), aatype one-hot of j then of i (22 + 22),
    unit vector (3, zeros unless `use_template_unit_vector`), backbone pair mask (1).
    rows: the same per-residue `template_*` arrays for a slice of residues i (default: all of them), so the
    features can be built a slice of pair rows at a time; every entry is computed as for the whole.
    """
    rows = template if rows is None else rows
    num_rows, num_res = rows["template_aatype"].shape[0], template["template_aatype"].shape[0]
    pb_mask_2d = (rows["template_pseudo_beta_mask"][:, None] * template["template_pseudo_beta_mask"][None, :]).astype(
        dtype
    )
    dgram = dgram_between(rows["template_pseudo_beta"], template["template_pseudo_beta"], **num_bins_config).astype(
        dtype
    )
    aatype_i = jax.nn.one_hot(rows["template_aatype"], 22, dtype=dtype)
    aatype_j = jax.nn.one_hot(template["template_aatype"], 22, dtype=dtype)

    def backbone_mask(atom_mask):
        return (
            atom_mask[..., rc.atom_order["N"]]
            * atom_mask[..., rc.atom_order["CA"]]
            * atom_mask[..., rc.atom_order["C"]]
        )

    backbone_2d = (
        backbone_mask(rows["template_all_atom_masks"])[:, None]
        * backbone_mask(template["template_all_atom_masks"])[None, :]
    )
    if use_unit_vector:
        if rows is not template:
            raise ValueError("template unit vectors are built for all rows at once")
        unit = template_backbone_unit_vectors(template["template_all_atom_positions"], backbone_2d)
        unit = [u[..., None].astype(dtype) for u in unit]
    else:
        unit = [jnp.zeros((num_rows, num_res, 1), dtype)] * 3
    backbone_2d = backbone_2d.astype(dtype)
    features = jnp.concatenate(
        [
            dgram,
            pb_mask_2d[..., None],
            jnp.broadcast_to(aatype_j[None, :, :], (num_rows, num_res, 22)),
            jnp.broadcast_to(aatype_i[:, None, :], (num_rows, num_res, 22)),
            *unit,
            backbone_2d[..., None],
        ],
        axis=-1,
    )
    # Zero the non-template regions so padded distogram bins carry no signal.
    return features * backbone_2d[..., None], backbone_2d


def embedded_template_pair(template: dict, config, dtype, weights, bias, chunk_size) -> jax.Array:
    """`embedding2d(template_pair_features(...))` `[N_res, N_res, c_t]`, `chunk_size` pair rows at a time
    (the 88-channel features never exist whole) unless unit vectors are on or chunk_size is 0."""
    use_unit = bool(config.use_template_unit_vector)

    def rows(row_arrays: dict | None):
        act, _ = template_pair_features(template, config.dgram_features, use_unit, dtype, row_arrays)
        return apply_linear(act, weights, bias)

    if use_unit or not isinstance(chunk_size, int) or chunk_size <= 0:
        return rows(None)
    keys = ("template_aatype", "template_pseudo_beta", "template_pseudo_beta_mask", "template_all_atom_masks")
    return chunked(lambda *arrays: rows(dict(zip(keys, arrays))), chunk_size)(*(template[k] for k in keys))


class SingleTemplateEmbedding(nn.Module):
    """Embeds one template into a pair tensor `[N_res, N_res, c_t]`. Scan body over templates."""

    config: object  # embeddings_and_evoformer.template
    global_config: object
    is_training: bool = False
    dap: Dap = NO_DAP

    @nn.compact
    def __call__(self, carry, template, mask_2d, normalized: bool = True):
        """`normalized=False` returns the pair stack's output before `output_layer_norm` (whose parameters
        still exist): `templates_in_place` normalises it a slice of rows at a time, never a second copy."""
        c = self.config
        dtype = mask_2d.dtype
        num_channels = c.template_pair_stack.triangle_attention_ending_node.value_dim
        weights, bias = Linear(
            num_channels, initializer="relu", num_input=NUM_TEMPLATE_PAIR_FEATURES, name="embedding2d"
        )()
        act = embedded_template_pair(template, c, dtype, weights, bias, self.global_config.chunk_size)
        act = TemplatePairStack(
            c.template_pair_stack, self.global_config, self.is_training, self.dap, name="template_pair_stack"
        )(act, mask_2d)
        output_norm = LayerNorm(self.global_config.kernels, name="output_layer_norm")
        return carry, output_norm(act) if normalized else act


class TemplateEmbedding(nn.Module):
    """All templates -> pair update `[N_res, N_res, c_z]` via pointwise attention from the query pair.

    query_embedding `[N_res, N_res, c_z]`; template_batch holds `template_*` arrays with a leading
    template axis; mask_2d `[N_res, N_res]`.
    """

    config: object
    global_config: object
    is_training: bool = False
    dap: Dap = NO_DAP

    @nn.compact
    def __call__(self, query_embedding, template_batch, mask_2d, in_place: bool = False):
        """Returns the pair update; with `in_place` (long-chain inference) the query pair with the update
        added into it (`templates_in_place`)."""
        if in_place:
            return templates_in_place(self, query_embedding, template_batch, mask_2d)
        c, gc = self.config, self.global_config
        num_res, _, c_z = query_embedding.shape
        dtype = query_embedding.dtype
        template_mask = template_batch["template_mask"].astype(dtype)
        num_templates = template_mask.shape[0]
        per_template = {k: v for k, v in template_batch.items() if k != "template_mask"}
        # A scan, not a Python loop: templates run one after another (one pair stack live at a time), and
        # under DAP their collectives stay in one order on every device (independent template branches
        # could otherwise enter their all-to-alls in different orders and deadlock).
        embed_all = nn.scan(
            SingleTemplateEmbedding,
            variable_broadcast="params",
            split_rngs={"params": False, "dropout": True},
            in_axes=(0, nn.broadcast),
            out_axes=0,
            length=num_templates,
        )
        carry = vary_like(jnp.zeros((), dtype), query_embedding, per_template, mask_2d)
        _, templates = embed_all(c, gc, self.is_training, self.dap, name="single_template_embedding")(
            carry, per_template, mask_2d.astype(dtype)
        )
        num_channels = templates.shape[-1]
        flat_query = query_embedding.reshape(num_res * num_res, 1, c_z)
        flat_templates = jnp.transpose(templates, (1, 2, 0, 3)).reshape(num_res * num_res, num_templates, num_channels)
        bias = mask_to_bias(template_mask)[None, None, None, :].astype(jnp.float32)
        attn = pointwise_template_attention(c, gc, c_z, chunk_size=pair_rows_chunk(gc.chunk_size, num_res))
        embedding = attn(flat_query, flat_templates, bias).reshape(num_res, num_res, c_z)
        # No signal (and no gradient) when no template is present.
        return embedding * (jnp.sum(template_mask) > 0.0).astype(dtype)


def pointwise_template_attention(c, gc, c_z: int, chunk_size: int = 0) -> Attention:
    """The attention of each pair position over its templates (AlphaFold's `attention` scope), as both the
    plain and the in-place template embedding create it."""
    return Attention(
        num_head=c.attention.num_head,
        output_dim=c_z,
        gating=c.attention.gating,
        key_dim=c.attention.key_dim,
        value_dim=c.attention.value_dim,
        zero_init=gc.zero_init,
        chunk_size=chunk_size,
        kernels=gc.kernels,
        name="attention",
    )


def templates_in_place(module: TemplateEmbedding, pair, template_batch, mask_2d):
    """The template embedding added into the pair `[N, N, c_z]` without holding every template's pair.

    The plain path stacks all templates' embeddings `[T, N, N, c_t]` (at N = 10,000 and 4 templates that is
    twice the pair) for the point-wise attention over templates. Here each template's embedding (pair stack
    in place) exists one at a time, twice: pass 1 keeps only its attention logits `[T, N, N, H]` (an eighth
    of the pair for T=4, H=4) and their log-normaliser over templates, and pass 2 adds
    each template's weighted values, through the output projection, into the pair a slice of rows at a time
    (the projection is linear, so the sum over templates can be taken after it). The same numbers as the
    plain path up to the order of float additions; the template stacks run twice (~5% of a prediction).
    """
    c, gc = module.config, module.global_config
    chunk = gc.chunk_size
    num_res, _, c_z = pair.shape
    dtype = pair.dtype
    template_mask = template_batch["template_mask"].astype(jnp.float32)
    num_templates = template_mask.shape[0]
    per_template = {k: v for k, v in template_batch.items() if k != "template_mask"}
    single_module = SingleTemplateEmbedding(c, gc, False, NO_DAP, name="single_template_embedding")
    single = pure(single_module, normalized=False)
    output_norm = single_module.variables["params"]["output_layer_norm"]
    p = pointwise_template_attention(c, gc, c_z).variables["params"]
    num_head = p["query_w"].shape[1]
    key_dim = p["query_w"].shape[2]
    mask_2d = mask_2d.astype(dtype)

    def template_act(t):
        template = jax.tree_util.tree_map(lambda x: jax.lax.dynamic_index_in_dim(x, t, 0, False), per_template)
        return single(jnp.zeros((), dtype), template, mask_2d)[1]  # [N, N, c_t], not yet normalised

    def normalized(act_rows):
        return layer_norm(act_rows, output_norm["scale"], output_norm["offset"], kernels=gc.kernels)

    def logits_rows(pair_rows, act_rows):
        act_rows = normalized(act_rows)
        q = jnp.einsum("ija,ahc->ijhc", pair_rows, p["query_w"].astype(dtype)) * key_dim ** (-0.5)
        k = jnp.einsum("ija,ahc->ijhc", act_rows, p["key_w"].astype(dtype))
        return jnp.einsum("ijhc,ijhc->ijh", q, k).astype(jnp.float32)

    def pass_1(t, logits):
        rows = chunked(logits_rows, chunk)(pair, template_act(t))
        rows = rows + mask_to_bias(template_mask[t])
        return jax.lax.dynamic_update_index_in_dim(logits, rows.astype(logits.dtype), t, 0)

    # Stored in the activation dtype: the products q.k are made in it (as on the plain path), so bf16 storage
    # loses nothing and halves the array (6.25 -> 3.1 GiB at N = 10,240).
    logits = jax.lax.fori_loop(
        0, num_templates, pass_1, output_buffer((num_templates, num_res, num_res, num_head), dtype, after=pair)
    )
    # The softmax over templates (float32) is taken a slice of rows at a time in pass 2, from the logits and
    # their log-normaliser `[N, N, H]`: no second `[T, N, N, H]` array of weights beside the logits.
    log_norm = jax.nn.logsumexp(logits.astype(jnp.float32), axis=0)
    any_template = (jnp.sum(template_mask) > 0.0).astype(dtype)

    def pass_2(t, pair):
        act = template_act(t)

        def update_rows(pair_rows, act_rows, logit_rows, log_norm_rows):
            act_rows = normalized(act_rows)
            logit_rows = jax.lax.dynamic_index_in_dim(logit_rows, t, 0, False).astype(jnp.float32)
            weight_rows = jnp.exp(logit_rows - log_norm_rows)
            v = jnp.einsum("ija,ahc->ijhc", act_rows, p["value_w"].astype(dtype))
            avg = weight_rows.astype(dtype)[..., None] * v
            if c.attention.gating:
                gate = jnp.einsum("ija,ahc->ijhc", pair_rows, p["gating_w"].astype(dtype)) + p["gating_b"].astype(dtype)
                avg = avg * jax.nn.sigmoid(gate)
            out = jnp.einsum("ijhc,hco->ijo", avg, p["output_w"].astype(dtype))
            out = out + (t == 0).astype(dtype) * p["output_b"].astype(dtype)  # the bias once, with template 0
            return out * any_template

        return add_in_place(update_rows, pair, 0, chunk, [(act, 0), (logits, 1), (log_norm, 0)])

    return jax.lax.fori_loop(0, num_templates, pass_2, pair)
