"""Triangle multiplicative update, outgoing or incoming edges (Suppl. Algs. 11, 12).

act `[N_res, N_res, c_z]`, mask `[N_res, N_res]` -> residual update `[N_res, N_res, c_z]`.
The config's `equation` is 'ikc,jkc->ijc' (outgoing) or 'kjc,kic->ijc' (incoming), as in AlphaFold.
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
        c = self.config.num_intermediate_channel
        mask = mask[..., None].astype(act.dtype)
        act = LayerNorm(gc.kernels, name="layer_norm_input")(act)
        input_act = act
        left = mask * Linear(c, name="left_projection")(act)
        right = mask * Linear(c, name="right_projection")(act)
        left = left * jax.nn.sigmoid(Linear(c, initializer=final_init(gc), bias_init=1.0, name="left_gate")(act))
        right = right * jax.nn.sigmoid(Linear(c, initializer=final_init(gc), bias_init=1.0, name="right_gate")(act))
        if self.dap.enabled:
            if self.config.equation not in GATHER_AXIS:
                raise ValueError(f"DAP supports the equations {sorted(GATHER_AXIS)}, not {self.config.equation!r}")
            right = self.dap.gather(right, axis=GATHER_AXIS[self.config.equation])
        act = jnp.einsum(self.config.equation, left, right)
        act = LayerNorm(gc.kernels, name="center_layer_norm")(act)
        channels = input_act.shape[-1]
        act = Linear(channels, initializer=final_init(gc), name="output_projection")(act)
        gate = Linear(channels, initializer=final_init(gc), bias_init=1.0, name="gating_linear")(input_act)
        return act * jax.nn.sigmoid(gate)
