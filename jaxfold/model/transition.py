"""The two-layer MLP transition applied to MSA or pair activations (Suppl. Algs. 9, 15).

act `[N_rows, N_cols, c]` -> residual update `[N_rows, N_cols, c]`. The mask is not applied, as in AlphaFold.
With `global_config.chunk_size` the 4x-wide hidden layer is materialised for that many rows at a time.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxfold.model.chunking import chunked
from jaxfold.model.primitives import LayerNorm, Linear, apply_linear, final_init


class Transition(nn.Module):
    config: object
    global_config: object

    @nn.compact
    def __call__(self, act, mask):
        del mask  # AlphaFold's transition ignores the mask; padded rows are masked downstream.
        channels = act.shape[-1]
        hidden = int(channels * self.config.num_intermediate_factor)
        act = LayerNorm(self.global_config.kernels, name="input_layer_norm")(act)
        w1, b1 = Linear(hidden, initializer="relu", num_input=channels, name="transition1")()
        w2, b2 = Linear(channels, initializer=final_init(self.global_config), num_input=hidden, name="transition2")()

        def mlp(x):
            return apply_linear(jax.nn.relu(apply_linear(x, w1, b1)), w2, b2)

        return chunked(mlp, self.global_config.chunk_size)(act)
