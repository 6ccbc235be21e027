"""Amber relaxation (OpenMM, optional extra: ``pip install "jaxfold[relax]"``).

``relax_structure(pdb_string, device="cpu") -> RelaxResult(pdb_string, protein, stats)``: AlphaFold's
restrained Amber99SB minimisation. Importing this package never needs OpenMM; calling
``relax_structure`` without it raises a one-line ImportError saying how to install it
(``require_openmm()`` raises the same up front, e.g. when a command line is asked to relax).
"""

from jaxfold.relax._openmm import INSTALL_HINT, require_openmm
from jaxfold.relax.cleanup import RelaxInputError
from jaxfold.relax.relax import STIFFNESS, TOLERANCE, RelaxError, RelaxResult, relax_structure
from jaxfold.relax.violations import Violations, find_violations

__all__ = [
    "INSTALL_HINT",
    "RelaxError",
    "RelaxInputError",
    "RelaxResult",
    "STIFFNESS",
    "TOLERANCE",
    "Violations",
    "find_violations",
    "relax_structure",
    "require_openmm",
]
