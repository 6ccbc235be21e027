"""AlphaFold's auxiliary prediction heads (Jumper et al. 2021, Suppl. Sec. 1.9), inference part.

Each head mirrors DeepMind's Haiku module of the same (snake_case) name in `modules.py`, with the same
parameter names and initialisers, and is called like AlphaFold's: `head(representations)` with the
representations dict of the trunk (`single`, `pair`, `msa`, plus `structure_module`, the structure
module's final `act`, for the pLDDT head). Losses live elsewhere.

| class | Haiku name | input | output |
| --- | --- | --- | --- |
| `DistogramHead` | `distogram_head` | `pair [N, N, c_z]` | `logits [N, N, 64]`, `bin_edges [63]` |
| `MaskedMsaHead` | `masked_msa_head` | `msa [S, N, c_m]` | `logits [S, N, 23]` |
| `PredictedLDDTHead` | `predicted_lddt_head` | `structure_module [N, c_s]` | `logits [N, 50]` |
| `ExperimentallyResolvedHead` | `experimentally_resolved_head` | `single [N, c_s]` | `logits [N, 37]` |
| `PredictedAlignedErrorHead` | `predicted_aligned_error_head` | `pair [N, N, c_z]` | `logits [N, N, 64]`, `breaks` |

(The PAE head also returns `asym_id [N]` for multimer.)

Inputs are cast to float32 (heads run in float32 whatever `global_config.dtype` is).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfold.common import residue_constants
from jaxfold.model.primitives import LayerNorm, Linear, final_init


def _f32(x) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


class DistogramHead(nn.Module):
    """Distogram prediction (Suppl. Sec. 1.9.8): symmetrised `half_logits` of the pair representation."""

    config: Any  # heads.distogram
    global_config: Any

    @nn.compact
    def __call__(self, representations: Mapping[str, jax.Array], batch=None, is_training: bool = False) -> dict:
        del batch, is_training
        half_logits = Linear(self.config.num_bins, initializer=final_init(self.global_config), name="half_logits")(
            _f32(representations["pair"])
        )
        logits = half_logits + jnp.swapaxes(half_logits, -2, -3)
        breaks = jnp.linspace(self.config.first_break, self.config.last_break, self.config.num_bins - 1)
        return {"logits": logits, "bin_edges": breaks}


class MaskedMsaHead(nn.Module):
    """Masked-MSA (BERT) prediction (Suppl. Sec. 1.9.9): a Linear of the MSA representation."""

    config: Any  # heads.masked_msa
    global_config: Any

    @nn.compact
    def __call__(self, representations: Mapping[str, jax.Array], batch=None, is_training: bool = False) -> dict:
        del batch, is_training
        if self.global_config.multimer_mode:
            num_output = len(residue_constants.restypes_with_x_and_gap)
        else:
            num_output = self.config.num_output
        logits = Linear(num_output, initializer=final_init(self.global_config), name="logits")(
            _f32(representations["msa"])
        )
        return {"logits": logits}


class PredictedLDDTHead(nn.Module):
    """Per-residue lDDT-Ca prediction (Suppl. Alg. 29) from the structure module's final activations."""

    config: Any  # heads.predicted_lddt
    global_config: Any

    @nn.compact
    def __call__(self, representations: Mapping[str, jax.Array], batch=None, is_training: bool = False) -> dict:
        del batch, is_training
        act = _f32(representations["structure_module"])
        act = LayerNorm(self.global_config.kernels, name="input_layer_norm")(act)
        act = jax.nn.relu(Linear(self.config.num_channels, initializer="relu", name="act_0")(act))
        act = jax.nn.relu(Linear(self.config.num_channels, initializer="relu", name="act_1")(act))
        logits = Linear(self.config.num_bins, initializer=final_init(self.global_config), name="logits")(act)
        return {"logits": logits}


class ExperimentallyResolvedHead(nn.Module):
    """Per-atom (atom37) "experimentally resolved" logits (Suppl. Sec. 1.9.10) from the single repr."""

    config: Any  # heads.experimentally_resolved
    global_config: Any

    @nn.compact
    def __call__(self, representations: Mapping[str, jax.Array], batch=None, is_training: bool = False) -> dict:
        del batch, is_training
        logits = Linear(residue_constants.atom_type_num, initializer=final_init(self.global_config), name="logits")(
            _f32(representations["single"])
        )
        return {"logits": logits}


class PredictedAlignedErrorHead(nn.Module):
    """Aligned-error prediction (Suppl. Sec. 1.9.7), the basis of PAE and pTM."""

    config: Any  # heads.predicted_aligned_error
    global_config: Any

    @nn.compact
    def __call__(self, representations: Mapping[str, jax.Array], batch=None, is_training: bool = False) -> dict:
        del is_training
        logits = Linear(self.config.num_bins, initializer=final_init(self.global_config), name="logits")(
            _f32(representations["pair"])
        )
        breaks = jnp.linspace(0.0, self.config.max_error_bin, self.config.num_bins - 1)
        if self.global_config.multimer_mode:
            # Chain ids travel with the head's outputs for the interface pTM (ipTM), as in AlphaFold-Multimer.
            return {"logits": logits, "breaks": breaks, "asym_id": batch["asym_id"]}
        return {"logits": logits, "breaks": breaks}


# Config key under `model.heads` -> (class, Haiku module name).
HEADS = {
    "distogram": (DistogramHead, "distogram_head"),
    "masked_msa": (MaskedMsaHead, "masked_msa_head"),
    "predicted_lddt": (PredictedLDDTHead, "predicted_lddt_head"),
    "experimentally_resolved": (ExperimentallyResolvedHead, "experimentally_resolved_head"),
    "predicted_aligned_error": (PredictedAlignedErrorHead, "predicted_aligned_error_head"),
}
