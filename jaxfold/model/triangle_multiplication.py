"""Triangle multiplicative update, outgoing or incoming edges (Suppl. Algs. 11, 12).

act `[N_res, N_res, c_z]`, mask `[N_res, N_res]` -> residual update `[N_res, N_res, c_z]`.
The config's `equation` is 'ikc,jkc->ijc' (outgoing) or 'kjc,kic->ijc' (incoming), as in AlphaFold.

Two parameter layouts produce the same masked, gated left/right operands and gate input:
- AlphaFold 2.0-2.2 (monomer, multimer v1/v2): `layer_norm_input`, `left_projection`, `right_projection`,
  `left_gate`, `right_gate`, then `center_layer_norm`;
- AlphaFold 2.3 `fuse_projection_weights` (multimer v3): `left_norm_input`, one `projection` and one `gate`
  of width 2c (left half, right half), then `center_norm`.
The second part is shared: `triangle_update` does triangle product -> centre LayerNorm -> output projection
x gate, with the fused Pallas kernel when `kernels` resolves to Pallas (`jaxfold.model.kernels`), else XLA, in
slices of `chunk_size` output rows when `chunk_size > 0` so the `[N, N, c]` temporaries of the product,
LayerNorm and projection exist one slice at a time (the operands are computed once, outside the slices).
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfold.model.chunking import chunked
from jaxfold.model.kernels import use_pallas
from jaxfold.model.primitives import LayerNorm, Linear, apply_linear, final_init, layer_norm
from jaxfold.parallel.dap import NO_DAP, Dap

# Under DAP the outgoing update runs on row slices and the incoming one on column slices; the operand indexed
# by the output's split axis must be whole, so it is all-gathered along that axis.
GATHER_AXIS = {"ikc,jkc->ijc": 0, "kjc,kic->ijc": 1}

# Output row i of the product indexes `left` axis 0 (outgoing: 'ikc,...') or `right` axis 1 (incoming:
# '...,kic'); chunking over output rows slices that operand there and takes the other one whole.
ROW_AXES = {"ikc,jkc->ijc": (0, None, 0), "kjc,kic->ijc": (None, 1, 0)}  # (left, right, gate_input)


class OutputWeights(NamedTuple):
    """Parameters of the second part: center LayerNorm `[c]`, output projection `[c, c_z]` + `[c_z]`,
    gating linear `[c_z, c_z]` + `[c_z]`."""

    center_scale: jax.Array
    center_offset: jax.Array
    output_weights: jax.Array
    output_bias: jax.Array
    gating_weights: jax.Array
    gating_bias: jax.Array


class LayerNormParams(nn.Module):
    """`scale`/`offset` `[num_channels]` of a LayerNorm applied elsewhere (inside the fused/chunked part)."""

    num_channels: int

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array]:
        return (
            self.param("scale", nn.initializers.ones, (self.num_channels,)),
            self.param("offset", nn.initializers.zeros, (self.num_channels,)),
        )


# The same products with `right` channel-major `[c, ., .]` (the in-place path's whole operand).
CHANNEL_MAJOR_RIGHT = {"ikc,jkc->ijc": "ikc,cjk->ijc", "kjc,kic->ijc": "kjc,cki->ijc"}


def triangle_update_xla(left, right, gate_input, w: OutputWeights, equation: str):
    """XLA: einsum -> center LayerNorm (fp32 statistics) -> output projection x sigmoid(gate).
    `equation` may be a `CHANNEL_MAJOR_RIGHT` one (right `[c, ., .]`)."""
    act = jnp.einsum(equation, left, right)
    act = layer_norm(act, w.center_scale, w.center_offset, kernels="xla")
    act = apply_linear(act, w.output_weights, w.output_bias)
    return act * jax.nn.sigmoid(apply_linear(gate_input, w.gating_weights, w.gating_bias))


def triangle_update(
    left,
    right,
    gate_input,
    w: OutputWeights,
    equation: str,
    kernels: str = "xla",
    chunk_size: int | None = None,
    right_channel_major: bool = False,
):
    """Triangle product -> center LayerNorm -> output projection x gate, `[I, J, c_z]`.

    left/right: the masked, gated operands (`equation`'s layouts, e.g. outgoing `[I, K, c]`, `[J, K, c]`);
    gate_input `[I, J, c_z]`. `chunk_size > 0` computes `chunk_size` output rows at a time (incoming: the
    rows are a slice of `right`'s axis 1, taken by the chunking helper; the pair is never transposed).
    right_channel_major: `right` is given as `[c, ., .]` (its channel axis moved first), the layout both
    products read, so a whole operand made that way is never transposed (`whole_right_operand`).
    """
    if equation not in ROW_AXES:
        raise ValueError(f"unknown triangle multiplication equation {equation!r}; expected one of {sorted(ROW_AXES)}")
    outgoing = equation == "ikc,jkc->ijc"
    if use_pallas(kernels):
        from pallas_kernels import triangle_multiplication as fused  # noqa: PLC0415  (optional GPU kernel)

        def core(l, r, g):
            # The kernel's wrapper moves the channels of `r` first again: the two moves cancel in XLA.
            r = jnp.moveaxis(r, 0, -1) if right_channel_major else r
            return fused.triangle_multiplication(l, r, g, *w, outgoing=outgoing)
    else:
        xla_equation = CHANNEL_MAJOR_RIGHT[equation] if right_channel_major else equation

        def core(l, r, g):
            return triangle_update_xla(l, r, g, w, xla_equation)

    left_axis, right_axis, gate_axis = ROW_AXES[equation]
    if right_channel_major and right_axis is not None:
        right_axis += 1
    return chunked(core, chunk_size, batch_axes=(left_axis, right_axis, gate_axis))(left, right, gate_input)


class TriangleMultiplication(nn.Module):
    config: object
    global_config: object
    dap: Dap = NO_DAP

    @nn.compact
    def __call__(self, act, mask, right=None):
        """act `[N, N, c_z]`, mask `[N, N]` -> update `[N, N, c_z]`.

        `right`: the whole right operand, channel-major `[c, N, N]`, when the caller computed it
        (`whole_right_operand`, in-place inference); `act`/`mask` are then the slice being updated (rows for
        the outgoing update, columns for the incoming one) and the update of that slice is returned.
        """
        gc = self.global_config
        c = self.config.num_intermediate_channel
        channels = act.shape[-1]
        given_right = right is not None
        chunk_size = 0 if given_right else gc.chunk_size  # a given slice is already small
        # Part 1: parameters and the masked, gated operands [N, N, c] in either layout.
        mask = mask[..., None].astype(act.dtype)
        fused = self.config.get("fuse_projection_weights", False)
        operands = self._fused_operands if fused else self._operands
        gate_input, left, own_right = operands(act, mask, need_right=right is None)
        right = own_right if right is None else right
        if self.dap.enabled:
            if self.config.equation not in GATHER_AXIS:
                raise ValueError(f"DAP supports the equations {sorted(GATHER_AXIS)}, not {self.config.equation!r}")
            right = self.dap.gather(right, axis=GATHER_AXIS[self.config.equation])
        # Part 2: product -> center LayerNorm -> output projection x gate (fused or chunked).
        weights = OutputWeights(
            *LayerNormParams(c, name="center_norm" if fused else "center_layer_norm")(),
            *Linear(channels, initializer=final_init(gc), num_input=c, name="output_projection")(),
            *Linear(channels, initializer=final_init(gc), bias_init=1.0, num_input=channels, name="gating_linear")(),
        )
        return triangle_update(
            left, right, gate_input, weights, self.config.equation, gc.kernels, chunk_size, given_right
        )

    def _operands(self, act, mask, need_right: bool = True):
        """Separate projections (AlphaFold <= 2.2 names). Returns (normed input, left, right or None)."""
        gc = self.global_config
        c = self.config.num_intermediate_channel
        act = LayerNorm(gc.kernels, name="layer_norm_input")(act)
        left = mask * Linear(c, name="left_projection")(act)
        left = left * jax.nn.sigmoid(Linear(c, initializer=final_init(gc), bias_init=1.0, name="left_gate")(act))
        right = None
        if need_right:
            right = mask * Linear(c, name="right_projection")(act)
            right = right * jax.nn.sigmoid(Linear(c, initializer=final_init(gc), bias_init=1.0, name="right_gate")(act))
        return act, left, right

    # ---- fused parameter layout (AlphaFold 2.3 `fuse_projection_weights`) ----------------------------------
    def _fused_operands(self, act, mask, need_right: bool = True):
        """One 2c-wide projection and gate, split into left/right halves (AlphaFold 2.3 names)."""
        gc = self.global_config
        c = self.config.num_intermediate_channel
        act = LayerNorm(gc.kernels, name="left_norm_input")(act)
        projection = mask * Linear(2 * c, name="projection")(act)
        projection = projection * jax.nn.sigmoid(
            Linear(2 * c, initializer=final_init(gc), bias_init=1.0, name="gate")(act)
        )
        return act, projection[..., :c], projection[..., c:] if need_right else None

    # ---- end of the fused parameter layout ------------------------------------------------------------------


def whole_right_operand(params: dict, act: jax.Array, mask: jax.Array, kernels: str, chunk_size: int) -> jax.Array:
    """The masked, gated right operand of `TriangleMultiplication` (either parameter layout) from its
    parameters, channel-major `[c, N, N]`, computed `chunk_size` rows at a time (no LayerNorm-ed copy of the
    pair): what every slice of the in-place update needs whole.

    Channel-major because both products (the Pallas kernel and XLA's batched matmul) read it so: a
    channel-last `[N, N, c]` operand was transposed into a second whole operand before the slice loop (seen
    on a GPU at N = 10,240: 25 GiB each in bf16)."""
    fused = "projection" in params
    norm = params["left_norm_input" if fused else "layer_norm_input"]
    if fused:  # the right half of the 2c-wide projection and gate
        c = params["projection"]["weights"].shape[-1] // 2
        projection = {k: v[..., c:] for k, v in params["projection"].items()}
        gate = {k: v[..., c:] for k, v in params["gate"].items()}
    else:
        projection, gate = params["right_projection"], params["right_gate"]

    def rows(act_rows, mask_rows):
        normed = layer_norm(act_rows, norm["scale"], norm["offset"], kernels=kernels)
        right = mask_rows[..., None].astype(act_rows.dtype) * apply_linear(
            normed, projection["weights"], projection["bias"]
        )
        right = right * jax.nn.sigmoid(apply_linear(normed, gate["weights"], gate["bias"]))
        return jnp.moveaxis(right, -1, 0)  # [c, rows, N]

    return chunked(rows, chunk_size, out_axis=1)(act, mask)
