"""AlphaFold2 in Flax. Public API:

- `run_alphafold(config, params, features, ...) -> dict[str, np.ndarray]`: the whole model with recycling
  on DeepMind's processed features (monomer: leading recycling axis; multimer, when
  `global_config.multimer_mode`: the multimer batch and the apply key `rng`), returning outputs under the
  key names of DeepMind's results (`structure_module/final_atom_positions`, `confidence/plddt`, ...). It is
  `jaxfold.model.predict.predict`, the one prediction path (also behind `infer.py`).
- `AlphaFold`: the Flax module underneath (`AlphaFold(config.model).apply({'params': params}, batch)`),
  the training path (recycling inside one compiled `while_loop`, differentiable last pass).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np

from jaxfold.model.alphafold import AlphaFold, AlphaFoldIteration
from jaxfold.model.predict import flat_outputs, flatten_outputs, predict

__all__ = ["AlphaFold", "AlphaFoldIteration", "run_alphafold", "predict", "flatten_outputs", "flat_outputs"]


def run_alphafold(
    config,
    params: Mapping,
    features: Mapping,
    mesh=None,
    *,
    rng: jax.Array | None = None,
    kernels: str | None = None,
    chunk_size: int | str | None = None,
    outputs: str = "full",
) -> dict[str, np.ndarray]:
    """Predict a structure with the whole model (`jaxfold.model.predict.predict`).

    config: a `jaxfold.config.Config` (e.g. `model_config('model_1_ptm')`).
    params: the tree from `jaxfold.weights.load_alphafold_params`.
    features: DeepMind's processed features with a leading recycling axis (`features.npz` layout).
    mesh: optional `jax.sharding.Mesh` (see `jaxfold.parallel.mesh.make_mesh`); its `dap` axis splits the
      trunk over devices (dynamic axial parallelism). Results equal the unsharded run to round-off.
    kernels: "auto" | "xla" | "pallas"; chunk_size: "auto" | int (0 = unchunked); None keeps the config's
      (`global_config.kernels`, `global_config.chunk_size`, both "auto" in the presets).
    outputs: "full" (every output, below) or "lean" (structure and confidences only, for long chains).
    Returns numpy arrays: `representations/*`, `structure_module/*`, each head's outputs, and
    `confidence/*` (`plddt`, and with the pTM head `predicted_aligned_error`,
    `max_predicted_aligned_error`, `aligned_confidence_probs`, `ptm`; plus `ranking_confidence`).

    Multimer configs (`config.model.global_config.multimer_mode`): `features` is the multimer batch as
    DeepMind's model consumes it (no recycling axis, the whole MSA; it is sampled inside the model) and `rng`
    the apply key (default `PRNGKey(0)`): the same key as `hk.transform(...).apply(params, rng, ...)` gives
    DeepMind's outputs. Adds `confidence/iptm`, the multimer `confidence/ranking_confidence` (0.8 ipTM +
    0.2 pTM) and `num_recycles` (recycling passes run; early stop on `recycle_early_stop_tolerance`).
    """
    return predict(
        config, params, features, mesh=mesh, rng=rng, kernels=kernels, chunk_size=chunk_size, outputs=outputs
    )
