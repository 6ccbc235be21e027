"""PAE and pTM computed on the device, a slice of pair rows at a time (the "lean" prediction outputs).

The predicted-aligned-error head's logits are `[N, N, 64]` float32: 26 GB at 10,000 residues, more than
the pair itself. `aligned_error_summary` never builds them whole: for `chunk_size` rows i at a time it
applies the head's linear layer, takes the softmax, and keeps only the expected error `[rows, N]` and each
row's TM-score term (the pTM "per alignment" value), exactly the arithmetic of `confidence.py` (DeepMind's
`confidence.py`) in float32. Used by `jaxfold.model.predict` when `outputs="lean"`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfold.model.chunking import chunked
from jaxfold.model.primitives import Linear, apply_linear, final_init


def bin_centers_from_breaks(breaks: jax.Array) -> jax.Array:
    """`num_bins - 1` bin edges -> `num_bins` centres (the last one a step beyond), as `confidence.py`."""
    step = breaks[1] - breaks[0]
    centers = breaks + step / 2
    return jnp.concatenate([centers, centers[-1:] + step])


def tm_d0(residue_weights: jax.Array) -> jax.Array:
    """d0 of the TM-score (Yang & Skolnick 2004, eqn. 5) for the weighted residue count, clipped at 19."""
    num_res = jnp.maximum(jnp.floor(jnp.sum(residue_weights)), 19.0)
    return 1.24 * (num_res - 15.0) ** (1.0 / 3) - 1.8


class AlignedErrorSummary(nn.Module):
    """The predicted-aligned-error head (Haiku name `predicted_aligned_error_head`) reduced on the fly.

    pair `[N, N, c_z]`, residue_weights `[N]` (the sequence mask), asym_id `[N]` or None ->
    `predicted_aligned_error [N, N]`, `max_predicted_aligned_error` (scalar), `ptm` (scalar) and, with
    `asym_id`, `iptm` (interface pTM: pairs of residues in different chains only).
    """

    config: object  # heads.predicted_aligned_error
    global_config: object
    chunk_size: int = 0

    @nn.compact
    def __call__(self, pair: jax.Array, residue_weights: jax.Array, asym_id: jax.Array | None = None) -> dict:
        c = self.config
        weights, bias = Linear(
            c.num_bins, initializer=final_init(self.global_config), num_input=pair.shape[-1], name="logits"
        )()
        breaks = jnp.linspace(0.0, c.max_error_bin, c.num_bins - 1)
        centers = bin_centers_from_breaks(breaks)
        residue_weights = residue_weights.astype(jnp.float32)
        tm_per_bin = 1.0 / (1.0 + jnp.square(centers) / jnp.square(tm_d0(residue_weights)))
        interface = asym_id is not None
        asym = asym_id if interface else jnp.zeros(pair.shape[:1], jnp.int32)

        def rows(pair_rows, weights_rows, asym_rows):
            logits = apply_linear(pair_rows.astype(jnp.float32), weights, bias)
            probs = jax.nn.softmax(logits, axis=-1)
            out = {"predicted_aligned_error": jnp.sum(probs * centers, axis=-1)}
            tm_term = jnp.sum(probs * tm_per_bin, axis=-1)  # [rows, N]
            masks = {"ptm": jnp.ones_like(tm_term)}
            if interface:
                masks["iptm"] = (asym_rows[:, None] != asym[None, :]).astype(jnp.float32)
            for name, pair_mask in masks.items():
                pair_weights = pair_mask * weights_rows[:, None] * residue_weights[None, :]
                normed = pair_weights / (1e-8 + jnp.sum(pair_weights, axis=-1, keepdims=True))
                out[f"{name}_per_alignment"] = jnp.sum(tm_term * pair_mask * normed, axis=-1)
            return out

        out = chunked(rows, self.chunk_size)(pair, residue_weights, asym)
        result = {
            "predicted_aligned_error": out.pop("predicted_aligned_error"),
            "max_predicted_aligned_error": centers[-1],
        }
        for name in ("ptm", "iptm") if interface else ("ptm",):
            per_alignment = out[f"{name}_per_alignment"]
            result[name] = per_alignment[jnp.argmax(per_alignment * residue_weights)]
        return result
