"""Shared helpers of the AlphaFold-Multimer module reference tests (shared/reference_multimer): the reference's
config, the module-reference loader fixture and the valid-position masks."""

import json
import os
from pathlib import Path

import numpy as np

from jaxfold.config import model_config

ATOL_TRUNK = 5e-5  # relative encoding, templates, Evoformer/extra-MSA iterations, triangle mult., heads
ATOL_SM = 1e-4  # IPA, fold iteration, structure module: activations, rotations, sin/cos
ATOL_SM_POS = 5e-4  # same: positions and translations (Angstrom)
NUM_VALID = 16  # of 18 residues in the padded module inputs

_MANIFEST = (
    Path(os.environ.get("JAXFOLD_SHARED") or Path(__file__).resolve().parents[2] / "shared")
    / "reference_multimer"
    / "manifest.json"
)
# The reference's config: model_1_multimer_v3 with the manifest's dotted overrides (fp32, shrunk depth).
OVERRIDES = json.loads(_MANIFEST.read_text())["overrides"] if _MANIFEST.is_file() else {}
CONFIG = model_config("model_1_multimer_v3", **OVERRIDES)
EMB = CONFIG.model.embeddings_and_evoformer
GC = CONFIG.model.global_config
SM = CONFIG.model.heads.structure_module


def valid_2d(shape):
    mask = np.zeros(shape[:2], bool)
    mask[:NUM_VALID, :NUM_VALID] = True
    return mask.reshape(shape[:2] + (1,) * (len(shape) - 2))


def valid_rows(shape, axis=0):
    mask = np.zeros(shape[axis], bool)
    mask[:NUM_VALID] = True
    return mask.reshape((1,) * axis + (-1,) + (1,) * (len(shape) - axis - 1))
