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

import numpy as np

from jaxfold.model.alphafold import AlphaFold, AlphaFoldIteration
from jaxfold.model.predict import flat_outputs, flatten_outputs, predict

__all__ = ["AlphaFold", "AlphaFoldIteration", "run_alphafold", "predict", "flatten_outputs", "flat_outputs"]


def run_alphafold(config, params: Mapping, features: Mapping, mesh=None, **options) -> dict[str, np.ndarray]:
    """Predict a structure with the whole model: `predict(config, params, features, mesh=mesh, **options)`,
    the one prediction path (`jaxfold.model.predict.predict`: its docstring lists every option, e.g. `rng`,
    `kernels`, `chunk_size`, `outputs`; `features` is DeepMind's processed layout, `features.npz`).

    Returns numpy arrays under DeepMind's output names: `representations/*`, `structure_module/*`, each
    head's outputs and `confidence/*` (multimer: also `confidence/iptm` and `num_recycles`).
    """
    return predict(config, params, features, mesh=mesh, **options)
