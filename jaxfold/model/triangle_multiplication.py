"""Triangle multiplicative update, outgoing or incoming edges (Suppl. Algs. 11, 12).

act `[N_res, N_res, c_z]`, mask `[N_res, N_res]` -> residual update `[N_res, N_res, c_z]`.
The config's `equation` is 'ikc,jkc->ijc' (outgoing) or 'kjc,kic->ijc' (incoming), as in AlphaFold.

Two parameter layouts produce the same masked, gated left/right operands and gate input:
- AlphaFold 2.0-2.2 (monomer, multimer v1/v2): `layer_norm_input`, `left_projection`, `right_projection`,
  `left_gate`, `right_gate`, then `center_layer_norm`;
- AlphaFold 2.3 `fuse_projection_weights` (multimer v3): `left_norm_input`, one `projection` and one `gate`
  of width 2c (left half, right half), then `center_norm`.
The product, centre LayerNorm, output projection and output gate are shared.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxfold.model.primitives import LayerNorm, Linear, final_init
from jaxfold.parallel.dap import NO_DAP, Dap

# Under DAP the outgoing update runs on row slices and the incoming one on column slices; the operand indexed
# by the output's split axis must be whole, so it is all-gathered along that axis.
GATHER_AXIS = {"ikc,jkc->ijc": 0, "kjc,kic->ijc": 1}


class TriangleMultiplication(nn.Module):
    config: object
    global_config: object
    dap: Dap = NO_DAP

    @nn.compact
    def __call__(self, act, mask):
        gc = self.global_config
        mask = mask[..., None].astype(act.dtype)
        if self.config.get("fuse_projection_weights", False):
            input_act, left, right = self._fused_operands(act, mask)
            center_norm_name = "center_norm"
        else:
            input_act, left, right = self._operands(act, mask)
            center_norm_name = "center_layer_norm"
        if self.dap.enabled:
            if self.config.equation not in GATHER_AXIS:
                raise ValueError(f"DAP supports the equations {sorted(GATHER_AXIS)}, not {self.config.equation!r}")
            right = self.dap.gather(right, axis=GATHER_AXIS[self.config.equation])
        act = jnp.einsum(self.config.equation, left, right)
        act = LayerNorm(gc.kernels, name=center_norm_name)(act)
        channels = input_act.shape[-1]
        act = Linear(channels, initializer=final_init(gc), name="output_projection")(act)
        gate = Linear(channels, initializer=final_init(gc), bias_init=1.0, name="gating_linear")(input_act)
        return act * jax.nn.sigmoid(gate)

    def _operands(self, act, mask):
        """Separate projections (AlphaFold <= 2.2 names). Returns (normed input, left, right)."""
        gc = self.global_config
        c = self.config.num_intermediate_channel
        act = LayerNorm(gc.kernels, name="layer_norm_input")(act)
        left = mask * Linear(c, name="left_projection")(act)
        right = mask * Linear(c, name="right_projection")(act)
        left = left * jax.nn.sigmoid(Linear(c, initializer=final_init(gc), bias_init=1.0, name="left_gate")(act))
        right = right * jax.nn.sigmoid(Linear(c, initializer=final_init(gc), bias_init=1.0, name="right_gate")(act))
        return act, left, right

    # ---- fused parameter layout (AlphaFold 2.3 `fuse_projection_weights`) ----------------------------------
    def _fused_operands(self, act, mask):
        """One 2c-wide projection and gate, split into left/right halves (AlphaFold 2.3 names)."""
        gc = self.global_config
        c = self.config.num_intermediate_channel
        act = LayerNorm(gc.kernels, name="left_norm_input")(act)
        projection = mask * Linear(2 * c, name="projection")(act)
        projection = projection * jax.nn.sigmoid(
            Linear(2 * c, initializer=final_init(gc), bias_init=1.0, name="gate")(act))
        return act, projection[..., :c], projection[..., c:]
    # ---- end of the fused parameter layout ------------------------------------------------------------------
