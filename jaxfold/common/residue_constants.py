"""Chemical facts about the 20 standard amino acids, in AlphaFold's encodings.

Source of the facts: DeepMind AlphaFold v2.3.2, ``alphafold/common/residue_constants.py``
(residue and atom orders, atom14 layouts, chi-angle atom lists, rigid-group literature
positions, van der Waals radii, HHblits alphabet). Bond lengths and angles in
``stereo_chemical_props.txt`` next to this module are the Engh & Huber (1991) values that
AlphaFold ships. Every public name, order and value matches AlphaFold's so that arrays
indexed by these tables line up with DeepMind's parameters and outputs; the derived
arrays are rebuilt here at import.

Index conventions used throughout the project:
  * ``aatype`` in ``[0, 21)``: ``restypes`` order (alphabetical by 3-letter code), 20 = UNK.
  * atom37: one slot per heavy-atom *name* (``atom_types``), same for every residue.
  * atom14: dense per-residue slots (``restype_name_to_atom14_names``).
  * 8 rigid groups: 0 backbone, 1 pre-omega, 2 phi, 3 psi, 4..7 chi1..chi4.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

# Distance from one CA to the next [trans peptide, omega = 180 deg].
ca_ca = 3.80209737096

# mmCIF entity-type strings used when writing protein chains.
PROTEIN_CHAIN = "polypeptide(L)"
POLYMER_CHAIN = "polymer"

# ---------------------------------------------------------------------------------------
# Chi angles.
# ---------------------------------------------------------------------------------------

# The four atoms that define chi1, chi2, ... for each residue (ALA and GLY have none;
# ARG's chi5 is planar, 0 +- 5 deg, and is left out).
chi_angles_atoms: dict[str, list[list[str]]] = {
    "ALA": [],
    "ARG": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD"], ["CB", "CG", "CD", "NE"], ["CG", "CD", "NE", "CZ"]],
    "ASN": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "OD1"]],
    "ASP": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "OD1"]],
    "CYS": [["N", "CA", "CB", "SG"]],
    "GLN": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD"], ["CB", "CG", "CD", "OE1"]],
    "GLU": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD"], ["CB", "CG", "CD", "OE1"]],
    "GLY": [],
    "HIS": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "ND1"]],
    "ILE": [["N", "CA", "CB", "CG1"], ["CA", "CB", "CG1", "CD1"]],
    "LEU": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD1"]],
    "LYS": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD"], ["CB", "CG", "CD", "CE"], ["CG", "CD", "CE", "NZ"]],
    "MET": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "SD"], ["CB", "CG", "SD", "CE"]],
    "PHE": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD1"]],
    "PRO": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD"]],
    "SER": [["N", "CA", "CB", "OG"]],
    "THR": [["N", "CA", "CB", "OG1"]],
    "TRP": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD1"]],
    "TYR": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD1"]],
    "VAL": [["N", "CA", "CB", "CG1"]],
}

# [20, 4]: which of chi1..chi4 exist, rows in `restypes` order (no UNK row, as in
# AlphaFold; callers append a zero row when they need 21).
chi_angles_mask: list[list[float]] = [
    [0.0, 0.0, 0.0, 0.0],  # ALA
    [1.0, 1.0, 1.0, 1.0],  # ARG
    [1.0, 1.0, 0.0, 0.0],  # ASN
    [1.0, 1.0, 0.0, 0.0],  # ASP
    [1.0, 0.0, 0.0, 0.0],  # CYS
    [1.0, 1.0, 1.0, 0.0],  # GLN
    [1.0, 1.0, 1.0, 0.0],  # GLU
    [0.0, 0.0, 0.0, 0.0],  # GLY
    [1.0, 1.0, 0.0, 0.0],  # HIS
    [1.0, 1.0, 0.0, 0.0],  # ILE
    [1.0, 1.0, 0.0, 0.0],  # LEU
    [1.0, 1.0, 1.0, 1.0],  # LYS
    [1.0, 1.0, 1.0, 0.0],  # MET
    [1.0, 1.0, 0.0, 0.0],  # PHE
    [1.0, 1.0, 0.0, 0.0],  # PRO
    [1.0, 0.0, 0.0, 0.0],  # SER
    [1.0, 0.0, 0.0, 0.0],  # THR
    [1.0, 1.0, 0.0, 0.0],  # TRP
    [1.0, 1.0, 0.0, 0.0],  # TYR
    [1.0, 0.0, 0.0, 0.0],  # VAL
]

# [21, 4]: chi angles that are symmetric under a rotation by pi (the last chi of the
# residues whose atom names are ambiguous). Unlike `chi_angles_mask` this has a UNK row.
chi_pi_periodic: list[list[float]] = [
    [0.0, 0.0, 0.0, 0.0],  # ALA
    [0.0, 0.0, 0.0, 0.0],  # ARG
    [0.0, 0.0, 0.0, 0.0],  # ASN
    [0.0, 1.0, 0.0, 0.0],  # ASP
    [0.0, 0.0, 0.0, 0.0],  # CYS
    [0.0, 0.0, 0.0, 0.0],  # GLN
    [0.0, 0.0, 1.0, 0.0],  # GLU
    [0.0, 0.0, 0.0, 0.0],  # GLY
    [0.0, 0.0, 0.0, 0.0],  # HIS
    [0.0, 0.0, 0.0, 0.0],  # ILE
    [0.0, 0.0, 0.0, 0.0],  # LEU
    [0.0, 0.0, 0.0, 0.0],  # LYS
    [0.0, 0.0, 0.0, 0.0],  # MET
    [0.0, 1.0, 0.0, 0.0],  # PHE
    [0.0, 0.0, 0.0, 0.0],  # PRO
    [0.0, 0.0, 0.0, 0.0],  # SER
    [0.0, 0.0, 0.0, 0.0],  # THR
    [0.0, 0.0, 0.0, 0.0],  # TRP
    [0.0, 1.0, 0.0, 0.0],  # TYR
    [0.0, 0.0, 0.0, 0.0],  # VAL
    [0.0, 0.0, 0.0, 0.0],  # UNK
]

# ---------------------------------------------------------------------------------------
# Idealised atom positions in their rigid group's local frame.
# Format per residue: [atom_name, rigid_group_index, (x, y, z) in Angstrom].
# Group frames: the x axis runs along the group's rotation axis and ends at the group
# origin; the atom that defines the torsion lies in the xy plane with y > 0.
# ---------------------------------------------------------------------------------------
rigid_group_atom_positions: dict[str, list[list]] = {
    "ALA": [
        ["N", 0, (-0.525, 1.363, 0.000)],
        ["CA", 0, (0.000, 0.000, 0.000)],
        ["C", 0, (1.526, -0.000, -0.000)],
        ["CB", 0, (-0.529, -0.774, -1.205)],
        ["O", 3, (0.627, 1.062, 0.000)],
    ],
    "ARG": [
        ["N", 0, (-0.524, 1.362, -0.000)],
        ["CA", 0, (0.000, 0.000, 0.000)],
        ["C", 0, (1.525, -0.000, -0.000)],
        ["CB", 0, (-0.524, -0.778, -1.209)],
        ["O", 3, (0.626, 1.062, 0.000)],
        ["CG", 4, (0.616, 1.390, -0.000)],
        ["CD", 5, (0.564, 1.414, 0.000)],
        ["NE", 6, (0.539, 1.357, -0.000)],
        ["NH1", 7, (0.206, 2.301, 0.000)],
        ["NH2", 7, (2.078, 0.978, -0.000)],
        ["CZ", 7, (0.758, 1.093, -0.000)],
    ],
    "ASN": [
        ["N", 0, (-0.536, 1.357, 0.000)],
        ["CA", 0, (0.000, 0.000, 0.000)],
        ["C", 0, (1.526, -0.000, -0.000)],
        ["CB", 0, (-0.531, -0.787, -1.200)],
        ["O", 3, (0.625, 1.062, 0.000)],
        ["CG", 4, (0.584, 1.399, 0.000)],
        ["ND2", 5, (0.593, -1.188, 0.001)],
        ["OD1", 5, (0.633, 1.059, 0.000)],
    ],
    "ASP": [
        ["N", 0, (-0.525, 1.362, -0.000)],
        ["CA", 0, (0.000, 0.000, 0.000)],
        ["C", 0, (1.527, 0.000, -0.000)],
        ["CB", 0, (-0.526, -0.778, -1.208)],
        ["O", 3, (0.626, 1.062, -0.000)],
        ["CG", 4, (0.593, 1.398, -0.000)],
        ["OD1", 5, (0.610, 1.091, 0.000)],
        ["OD2", 5, (0.592, -1.101, -0.003)],
    ],
    "CYS": [
        ["N", 0, (-0.522, 1.362, -0.000)],
        ["CA", 0, (0.000, 0.000, 0.000)],
        ["C", 0, (1.524, 0.000, 0.000)],
        ["CB", 0, (-0.519, -0.773, -1.212)],
        ["O", 3, (0.625, 1.062, -0.000)],
        ["SG", 4, (0.728, 1.653, 0.000)],
    ],
    "GLN": [
        ["N", 0, (-0.526, 1.361, -0.000)],
        ["CA", 0, (0.000, 0.000, 0.000)],
        ["C", 0, (1.526, 0.000, 0.000)],
        ["CB", 0, (-0.525, -0.779, -1.207)],
        ["O", 3, (0.626, 1.062, -0.000)],
        ["CG", 4, (0.615, 1.393, 0.000)],
        ["CD", 5, (0.587, 1.399, -0.000)],
        ["NE2", 6, (0.593, -1.189, -0.001)],
        ["OE1", 6, (0.634, 1.060, 0.000)],
    ],
    "GLU": [
        ["N", 0, (-0.528, 1.361, 0.000)],
        ["CA", 0, (0.000, 0.000, 0.000)],
        ["C", 0, (1.526, -0.000, -0.000)],
        ["CB", 0, (-0.526, -0.781, -1.207)],
        ["O", 3, (0.626, 1.062, 0.000)],
        ["CG", 4, (0.615, 1.392, 0.000)],
        ["CD", 5, (0.600, 1.397, 0.000)],
        ["OE1", 6, (0.607, 1.095, -0.000)],
        ["OE2", 6, (0.589, -1.104, -0.001)],
    ],
    "GLY": [
        ["N", 0, (-0.572, 1.337, 0.000)],
        ["CA", 0, (0.000, 0.000, 0.000)],
        ["C", 0, (1.517, -0.000, -0.000)],
        ["O", 3, (0.626, 1.062, -0.000)],
    ],
    "HIS": [
        ["N", 0, (-0.527, 1.360, 0.000)],
        ["CA", 0, (0.000, 0.000, 0.000)],
        ["C", 0, (1.525, 0.000, 0.000)],
        ["CB", 0, (-0.525, -0.778, -1.208)],
        ["O", 3, (0.625, 1.063, 0.000)],
        ["CG", 4, (0.600, 1.370, -0.000)],
        ["CD2", 5, (0.889, -1.021, 0.003)],
        ["ND1", 5, (0.744, 1.160, -0.000)],
        ["CE1", 5, (2.030, 0.851, 0.002)],
        ["NE2", 5, (2.145, -0.466, 0.004)],
    ],
    "ILE": [
        ["N", 0, (-0.493, 1.373, -0.000)],
        ["CA", 0, (0.000, 0.000, 0.000)],
        ["C", 0, (1.527, -0.000, -0.000)],
        ["CB", 0, (-0.536, -0.793, -1.213)],
        ["O", 3, (0.627, 1.062, -0.000)],
        ["CG1", 4, (0.534, 1.437, -0.000)],
        ["CG2", 4, (0.540, -0.785, -1.199)],
        ["CD1", 5, (0.619, 1.391, 0.000)],
    ],
    "LEU": [
        ["N", 0, (-0.520, 1.363, 0.000)],
        ["CA", 0, (0.000, 0.000, 0.000)],
        ["C", 0, (1.525, -0.000, -0.000)],
        ["CB", 0, (-0.522, -0.773, -1.214)],
        ["O", 3, (0.625, 1.063, -0.000)],
        ["CG", 4, (0.678, 1.371, 0.000)],
        ["CD1", 5, (0.530, 1.430, -0.000)],
        ["CD2", 5, (0.535, -0.774, 1.200)],
    ],
    "LYS": [
        ["N", 0, (-0.526, 1.362, -0.000)],
        ["CA", 0, (0.000, 0.000, 0.000)],
        ["C", 0, (1.526, 0.000, 0.000)],
        ["CB", 0, (-0.524, -0.778, -1.208)],
        ["O", 3, (0.626, 1.062, -0.000)],
        ["CG", 4, (0.619, 1.390, 0.000)],
        ["CD", 5, (0.559, 1.417, 0.000)],
        ["CE", 6, (0.560, 1.416, 0.000)],
        ["NZ", 7, (0.554, 1.387, 0.000)],
    ],
    "MET": [
        ["N", 0, (-0.521, 1.364, -0.000)],
        ["CA", 0, (0.000, 0.000, 0.000)],
        ["C", 0, (1.525, 0.000, 0.000)],
        ["CB", 0, (-0.523, -0.776, -1.210)],
        ["O", 3, (0.625, 1.062, -0.000)],
        ["CG", 4, (0.613, 1.391, -0.000)],
        ["SD", 5, (0.703, 1.695, 0.000)],
        ["CE", 6, (0.320, 1.786, -0.000)],
    ],
    "PHE": [
        ["N", 0, (-0.518, 1.363, 0.000)],
        ["CA", 0, (0.000, 0.000, 0.000)],
        ["C", 0, (1.524, 0.000, -0.000)],
        ["CB", 0, (-0.525, -0.776, -1.212)],
        ["O", 3, (0.626, 1.062, -0.000)],
        ["CG", 4, (0.607, 1.377, 0.000)],
        ["CD1", 5, (0.709, 1.195, -0.000)],
        ["CD2", 5, (0.706, -1.196, 0.000)],
        ["CE1", 5, (2.102, 1.198, -0.000)],
        ["CE2", 5, (2.098, -1.201, -0.000)],
        ["CZ", 5, (2.794, -0.003, -0.001)],
    ],
    "PRO": [
        ["N", 0, (-0.566, 1.351, -0.000)],
        ["CA", 0, (0.000, 0.000, 0.000)],
        ["C", 0, (1.527, -0.000, 0.000)],
        ["CB", 0, (-0.546, -0.611, -1.293)],
        ["O", 3, (0.621, 1.066, 0.000)],
        ["CG", 4, (0.382, 1.445, 0.0)],
        # AlphaFold widened this angle by 2 degrees by hand (was (0.427, 1.440, 0.0)).
        ["CD", 5, (0.477, 1.424, 0.0)],
    ],
    "SER": [
        ["N", 0, (-0.529, 1.360, -0.000)],
        ["CA", 0, (0.000, 0.000, 0.000)],
        ["C", 0, (1.525, -0.000, -0.000)],
        ["CB", 0, (-0.518, -0.777, -1.211)],
        ["O", 3, (0.626, 1.062, -0.000)],
        ["OG", 4, (0.503, 1.325, 0.000)],
    ],
    "THR": [
        ["N", 0, (-0.517, 1.364, 0.000)],
        ["CA", 0, (0.000, 0.000, 0.000)],
        ["C", 0, (1.526, 0.000, -0.000)],
        ["CB", 0, (-0.516, -0.793, -1.215)],
        ["O", 3, (0.626, 1.062, 0.000)],
        ["CG2", 4, (0.550, -0.718, -1.228)],
        ["OG1", 4, (0.472, 1.353, 0.000)],
    ],
    "TRP": [
        ["N", 0, (-0.521, 1.363, 0.000)],
        ["CA", 0, (0.000, 0.000, 0.000)],
        ["C", 0, (1.525, -0.000, 0.000)],
        ["CB", 0, (-0.523, -0.776, -1.212)],
        ["O", 3, (0.627, 1.062, 0.000)],
        ["CG", 4, (0.609, 1.370, -0.000)],
        ["CD1", 5, (0.824, 1.091, 0.000)],
        ["CD2", 5, (0.854, -1.148, -0.005)],
        ["CE2", 5, (2.186, -0.678, -0.007)],
        ["CE3", 5, (0.622, -2.530, -0.007)],
        ["NE1", 5, (2.140, 0.690, -0.004)],
        ["CH2", 5, (3.028, -2.890, -0.013)],
        ["CZ2", 5, (3.283, -1.543, -0.011)],
        ["CZ3", 5, (1.715, -3.389, -0.011)],
    ],
    "TYR": [
        ["N", 0, (-0.522, 1.362, 0.000)],
        ["CA", 0, (0.000, 0.000, 0.000)],
        ["C", 0, (1.524, -0.000, -0.000)],
        ["CB", 0, (-0.522, -0.776, -1.213)],
        ["O", 3, (0.627, 1.062, -0.000)],
        ["CG", 4, (0.607, 1.382, -0.000)],
        ["CD1", 5, (0.716, 1.195, -0.000)],
        ["CD2", 5, (0.713, -1.194, -0.001)],
        ["CE1", 5, (2.107, 1.200, -0.002)],
        ["CE2", 5, (2.104, -1.201, -0.003)],
        ["OH", 5, (4.168, -0.002, -0.005)],
        ["CZ", 5, (2.791, -0.001, -0.003)],
    ],
    "VAL": [
        ["N", 0, (-0.494, 1.373, -0.000)],
        ["CA", 0, (0.000, 0.000, 0.000)],
        ["C", 0, (1.527, -0.000, -0.000)],
        ["CB", 0, (-0.533, -0.795, -1.213)],
        ["O", 3, (0.627, 1.062, -0.000)],
        ["CG1", 4, (0.540, 1.429, -0.000)],
        ["CG2", 4, (0.533, -0.776, 1.203)],
    ],
}

# Heavy atoms of each residue, PDB names (the order here is AlphaFold's; nothing
# depends on it except code that iterates it).
residue_atoms: dict[str, list[str]] = {
    "ALA": ["C", "CA", "CB", "N", "O"],
    "ARG": ["C", "CA", "CB", "CG", "CD", "CZ", "N", "NE", "O", "NH1", "NH2"],
    "ASP": ["C", "CA", "CB", "CG", "N", "O", "OD1", "OD2"],
    "ASN": ["C", "CA", "CB", "CG", "N", "ND2", "O", "OD1"],
    "CYS": ["C", "CA", "CB", "N", "O", "SG"],
    "GLU": ["C", "CA", "CB", "CG", "CD", "N", "O", "OE1", "OE2"],
    "GLN": ["C", "CA", "CB", "CG", "CD", "N", "NE2", "O", "OE1"],
    "GLY": ["C", "CA", "N", "O"],
    "HIS": ["C", "CA", "CB", "CG", "CD2", "CE1", "N", "ND1", "NE2", "O"],
    "ILE": ["C", "CA", "CB", "CG1", "CG2", "CD1", "N", "O"],
    "LEU": ["C", "CA", "CB", "CG", "CD1", "CD2", "N", "O"],
    "LYS": ["C", "CA", "CB", "CG", "CD", "CE", "N", "NZ", "O"],
    "MET": ["C", "CA", "CB", "CG", "CE", "N", "O", "SD"],
    "PHE": ["C", "CA", "CB", "CG", "CD1", "CD2", "CE1", "CE2", "CZ", "N", "O"],
    "PRO": ["C", "CA", "CB", "CG", "CD", "N", "O"],
    "SER": ["C", "CA", "CB", "N", "O", "OG"],
    "THR": ["C", "CA", "CB", "CG2", "N", "O", "OG1"],
    "TRP": ["C", "CA", "CB", "CG", "CD1", "CD2", "CE2", "CE3", "CZ2", "CZ3", "CH2", "N", "NE1", "O"],
    "TYR": ["C", "CA", "CB", "CG", "CD1", "CD2", "CE1", "CE2", "CZ", "N", "O", "OH"],
    "VAL": ["C", "CA", "CB", "CG1", "CG2", "N", "O"],
}

# Atom pairs whose names swap under a 180 degree flip of the last chi group. Only these
# four residues; LEU/VAL/ARG look symmetric but their names are fixed by chirality or
# by the neighbouring atoms, so AlphaFold leaves them out.
residue_atom_renaming_swaps: dict[str, dict[str, str]] = {
    "ASP": {"OD1": "OD2"},
    "GLU": {"OE1": "OE2"},
    "PHE": {"CD1": "CD2", "CE1": "CE2"},
    "TYR": {"CD1": "CD2", "CE1": "CE2"},
}

# Van der Waals radii in Angstrom, keyed by element (first letter of the atom name).
van_der_waals_radius: dict[str, float] = {
    "C": 1.7,
    "N": 1.55,
    "O": 1.52,
    "S": 1.8,
}

# ---------------------------------------------------------------------------------------
# Stereochemistry (Engh & Huber 1991) from stereo_chemical_props.txt.
# ---------------------------------------------------------------------------------------

Bond = collections.namedtuple("Bond", ["atom1_name", "atom2_name", "length", "stddev"])
BondAngle = collections.namedtuple("BondAngle", ["atom1_name", "atom2_name", "atom3name", "angle_rad", "stddev"])

STEREO_CHEMICAL_PROPS_PATH = Path(__file__).resolve().parent / "stereo_chemical_props.txt"


def _read_table_section(lines, n_fields: int) -> list[list[str]]:
    """Reads rows of a whitespace table until the '-' terminator; skips the header row."""
    next(lines)  # header
    rows = []
    for line in lines:
        if line.strip() == "-":
            break
        fields = line.split()
        if len(fields) != n_fields:
            raise ValueError(f"Malformed line in {STEREO_CHEMICAL_PROPS_PATH.name}: {line!r}")
        rows.append(fields)
    return rows


def _virtual_bond(bond1: Bond, bond2: Bond, angle: BondAngle) -> Bond:
    """The 1-3 distance of a bond angle (law of cosines) with propagated stddev.

    Errors of the two lengths and the angle are treated as uncorrelated.
    """
    a, b, gamma = bond1.length, bond2.length, angle.angle_rad
    length = np.sqrt(a**2 + b**2 - 2 * a * b * np.cos(gamma))
    half_inv = 0.5 / length  # d sqrt(u) / du
    dl_dgamma = (2 * a * b * np.sin(gamma)) * half_inv
    dl_da = (2 * a - 2 * b * np.cos(gamma)) * half_inv
    dl_db = (2 * b - 2 * a * np.cos(gamma)) * half_inv
    stddev = np.sqrt((dl_dgamma * angle.stddev) ** 2 + (dl_da * bond1.stddev) ** 2 + (dl_db * bond2.stddev) ** 2)
    return Bond(angle.atom1_name, angle.atom3name, length, stddev)


@functools.cache
def load_stereo_chemical_props() -> tuple[
    Mapping[str, list[Bond]], Mapping[str, list[Bond]], Mapping[str, list[BondAngle]]
]:
    """Loads literature bond lengths and angles.

    Returns:
      residue_bonds: resname -> [Bond] (lengths in Angstrom).
      residue_virtual_bonds: resname -> [Bond] for the 1-3 distance across each bond
        angle, i.e. the angle expressed as a length.
      residue_bond_angles: resname -> [BondAngle] (radians).
      Each mapping has an empty 'UNK' entry.
    """
    lines = iter(STEREO_CHEMICAL_PROPS_PATH.read_text().splitlines())

    residue_bonds: dict[str, list[Bond]] = {}
    for bond, resname, length, stddev in _read_table_section(lines, 4):
        atom1, atom2 = bond.split("-")
        residue_bonds.setdefault(resname, []).append(Bond(atom1, atom2, float(length), float(stddev)))
    residue_bonds["UNK"] = []

    next(lines)  # blank line between the sections
    residue_bond_angles: dict[str, list[BondAngle]] = {}
    for angle, resname, degrees, stddev_degrees in _read_table_section(lines, 4):
        atom1, atom2, atom3 = angle.split("-")
        residue_bond_angles.setdefault(resname, []).append(
            BondAngle(atom1, atom2, atom3, float(degrees) / 180.0 * np.pi, float(stddev_degrees) / 180.0 * np.pi)
        )
    residue_bond_angles["UNK"] = []

    def bond_key(name1, name2):
        return "-".join(sorted([name1, name2]))

    residue_virtual_bonds: dict[str, list[Bond]] = {}
    for resname, angles in residue_bond_angles.items():
        by_key = {bond_key(b.atom1_name, b.atom2_name): b for b in residue_bonds[resname]}
        residue_virtual_bonds[resname] = [
            _virtual_bond(
                by_key[bond_key(ba.atom1_name, ba.atom2_name)], by_key[bond_key(ba.atom2_name, ba.atom3name)], ba
            )
            for ba in angles
        ]
    return residue_bonds, residue_virtual_bonds, residue_bond_angles


# Peptide bond C(i)-N(i+1): index 0 for a general next residue, 1 when it is proline.
between_res_bond_length_c_n = [1.329, 1.341]
between_res_bond_length_stddev_c_n = [0.014, 0.016]

# Cosines of the angles across the peptide bond: [mean, stddev].
between_res_cos_angles_c_n_ca = [-0.5203, 0.0353]  # degrees: 121.352 +- 2.315
between_res_cos_angles_ca_c_n = [-0.4473, 0.0311]  # degrees: 116.568 +- 1.995

# ---------------------------------------------------------------------------------------
# Atom and residue orders.
# ---------------------------------------------------------------------------------------

atom_types: list[str] = [
    "N",
    "CA",
    "C",
    "CB",
    "O",
    "CG",
    "CG1",
    "CG2",
    "OG",
    "OG1",
    "SG",
    "CD",
    "CD1",
    "CD2",
    "ND1",
    "ND2",
    "OD1",
    "OD2",
    "SD",
    "CE",
    "CE1",
    "CE2",
    "CE3",
    "NE",
    "NE1",
    "NE2",
    "OE1",
    "OE2",
    "CH2",
    "NH1",
    "NH2",
    "OH",
    "CZ",
    "CZ2",
    "CZ3",
    "NZ",
    "OXT",
]
atom_order: dict[str, int] = {name: i for i, name in enumerate(atom_types)}
atom_type_num = len(atom_types)  # 37

# Dense 14-slot layout; '' marks an unused slot. Backbone N, CA, C, O always come first.
# pylint: disable=line-too-long
restype_name_to_atom14_names: dict[str, list[str]] = {
    "ALA": ["N", "CA", "C", "O", "CB", "", "", "", "", "", "", "", "", ""],
    "ARG": ["N", "CA", "C", "O", "CB", "CG", "CD", "NE", "CZ", "NH1", "NH2", "", "", ""],
    "ASN": ["N", "CA", "C", "O", "CB", "CG", "OD1", "ND2", "", "", "", "", "", ""],
    "ASP": ["N", "CA", "C", "O", "CB", "CG", "OD1", "OD2", "", "", "", "", "", ""],
    "CYS": ["N", "CA", "C", "O", "CB", "SG", "", "", "", "", "", "", "", ""],
    "GLN": ["N", "CA", "C", "O", "CB", "CG", "CD", "OE1", "NE2", "", "", "", "", ""],
    "GLU": ["N", "CA", "C", "O", "CB", "CG", "CD", "OE1", "OE2", "", "", "", "", ""],
    "GLY": ["N", "CA", "C", "O", "", "", "", "", "", "", "", "", "", ""],
    "HIS": ["N", "CA", "C", "O", "CB", "CG", "ND1", "CD2", "CE1", "NE2", "", "", "", ""],
    "ILE": ["N", "CA", "C", "O", "CB", "CG1", "CG2", "CD1", "", "", "", "", "", ""],
    "LEU": ["N", "CA", "C", "O", "CB", "CG", "CD1", "CD2", "", "", "", "", "", ""],
    "LYS": ["N", "CA", "C", "O", "CB", "CG", "CD", "CE", "NZ", "", "", "", "", ""],
    "MET": ["N", "CA", "C", "O", "CB", "CG", "SD", "CE", "", "", "", "", "", ""],
    "PHE": ["N", "CA", "C", "O", "CB", "CG", "CD1", "CD2", "CE1", "CE2", "CZ", "", "", ""],
    "PRO": ["N", "CA", "C", "O", "CB", "CG", "CD", "", "", "", "", "", "", ""],
    "SER": ["N", "CA", "C", "O", "CB", "OG", "", "", "", "", "", "", "", ""],
    "THR": ["N", "CA", "C", "O", "CB", "OG1", "CG2", "", "", "", "", "", "", ""],
    "TRP": ["N", "CA", "C", "O", "CB", "CG", "CD1", "CD2", "NE1", "CE2", "CE3", "CZ2", "CZ3", "CH2"],
    "TYR": ["N", "CA", "C", "O", "CB", "CG", "CD1", "CD2", "CE1", "CE2", "CZ", "OH", "", ""],
    "VAL": ["N", "CA", "C", "O", "CB", "CG1", "CG2", "", "", "", "", "", "", ""],
    "UNK": ["", "", "", "", "", "", "", "", "", "", "", "", "", ""],
}
# pylint: enable=line-too-long

# Residue order: one-letter codes sorted by their three-letter names.
restypes: list[str] = [
    "A",
    "R",
    "N",
    "D",
    "C",
    "Q",
    "E",
    "G",
    "H",
    "I",
    "L",
    "K",
    "M",
    "F",
    "P",
    "S",
    "T",
    "W",
    "Y",
    "V",
]
restype_order: dict[str, int] = {r: i for i, r in enumerate(restypes)}
restype_num = len(restypes)  # 20
unk_restype_index = restype_num  # 20: catch-all for anything non-standard

restypes_with_x: list[str] = restypes + ["X"]
restype_order_with_x: dict[str, int] = {r: i for i, r in enumerate(restypes_with_x)}

restype_1to3: dict[str, str] = {
    "A": "ALA",
    "R": "ARG",
    "N": "ASN",
    "D": "ASP",
    "C": "CYS",
    "Q": "GLN",
    "E": "GLU",
    "G": "GLY",
    "H": "HIS",
    "I": "ILE",
    "L": "LEU",
    "K": "LYS",
    "M": "MET",
    "F": "PHE",
    "P": "PRO",
    "S": "SER",
    "T": "THR",
    "W": "TRP",
    "Y": "TYR",
    "V": "VAL",
}
# A strict 1-to-1 inverse; unlike Bio.PDB's table it has no MSE, SEC, ... entries.
restype_3to1: dict[str, str] = {v: k for k, v in restype_1to3.items()}

unk_restype = "UNK"
resnames: list[str] = [restype_1to3[r] for r in restypes] + [unk_restype]
resname_to_idx: dict[str, int] = {name: i for i, name in enumerate(resnames)}

# HHblits alphabet: 20 amino acids in one-letter alphabetical order, then X (20) and the
# gap '-' (21). Ambiguity codes fold onto standard letters (B->D, Z->E, U->C; J, O->X).
HHBLITS_AA_TO_ID: dict[str, int] = {
    "A": 0,
    "B": 2,
    "C": 1,
    "D": 2,
    "E": 3,
    "F": 4,
    "G": 5,
    "H": 6,
    "I": 7,
    "J": 20,
    "K": 8,
    "L": 9,
    "M": 10,
    "N": 11,
    "O": 20,
    "P": 12,
    "Q": 13,
    "R": 14,
    "S": 15,
    "T": 16,
    "U": 1,
    "V": 17,
    "W": 18,
    "X": 20,
    "Y": 19,
    "Z": 3,
    "-": 21,
}
# One representative letter per HHblits id.
ID_TO_HHBLITS_AA: dict[int, str] = {
    0: "A",
    1: "C",
    2: "D",
    3: "E",
    4: "F",
    5: "G",
    6: "H",
    7: "I",
    8: "K",
    9: "L",
    10: "M",
    11: "N",
    12: "P",
    13: "Q",
    14: "R",
    15: "S",
    16: "T",
    17: "V",
    18: "W",
    19: "Y",
    20: "X",
    21: "-",
}

restypes_with_x_and_gap: list[str] = restypes + ["X", "-"]
# HHblits id -> our id (length 22).
MAP_HHBLITS_AATYPE_TO_OUR_AATYPE: tuple[int, ...] = tuple(
    restypes_with_x_and_gap.index(ID_TO_HHBLITS_AA[i]) for i in range(len(restypes_with_x_and_gap))
)


def sequence_to_onehot(sequence: str, mapping: Mapping[str, int], map_unknown_to_x: bool = False) -> np.ndarray:
    """One-hot encodes a sequence.

    Args:
      sequence: amino-acid letters, length L.
      mapping: letter -> index; its values must be exactly 0..K-1.
      map_unknown_to_x: letters missing from `mapping` map to mapping['X']. Even then
        only upper-case letters are accepted (lower case, gaps and dots are A3M
        insertions / alignment characters, which must not slip through silently).

    Returns:
      int32 array [L, K].

    Raises:
      ValueError: on a mapping with gaps in its values, or on a letter that cannot be
        encoded (the message names the letter and its 0-based position).
    """
    num_entries = max(mapping.values()) + 1
    if sorted(set(mapping.values())) != list(range(num_entries)):
        raise ValueError(
            f"The mapping must have values from 0 to num_unique_aas-1 without any gaps. Got: {sorted(mapping.values())}"
        )
    if map_unknown_to_x and "X" not in mapping:
        raise ValueError("map_unknown_to_x=True needs an 'X' entry in the mapping.")

    one_hot = np.zeros((len(sequence), num_entries), dtype=np.int32)
    for position, letter in enumerate(sequence):
        if map_unknown_to_x:
            if not (letter.isalpha() and letter.isupper()):
                raise ValueError(f"Invalid character {letter!r} at position {position} of the sequence.")
            index = mapping.get(letter, mapping["X"])
        else:
            if letter not in mapping:
                raise ValueError(
                    f"Character {letter!r} at position {position} of the sequence is not "
                    "in the mapping (pass map_unknown_to_x=True to encode it as X)."
                )
            index = mapping[letter]
        one_hot[position, index] = 1
    return one_hot


def aatype_to_str_sequence(aatype: Sequence[int]) -> str:
    """Decodes aatype indices [L] (0..20) to one-letter codes, 20 -> 'X'."""
    return "".join(restypes_with_x[int(i)] for i in aatype)


# ---------------------------------------------------------------------------------------
# Derived lookup tables, built at import.
# ---------------------------------------------------------------------------------------


def _make_standard_atom_mask() -> np.ndarray:
    """[21, 37] int32: 1 where the residue type has that atom (UNK row all zeros)."""
    mask = np.zeros([restype_num + 1, atom_type_num], dtype=np.int32)
    for restype, letter in enumerate(restypes):
        for name in residue_atoms[restype_1to3[letter]]:
            mask[restype, atom_order[name]] = 1
    return mask


STANDARD_ATOM_MASK = _make_standard_atom_mask()


def chi_angle_atom(atom_index: int) -> np.ndarray:
    """[21, 37, 4] one-hot of the `atom_index`-th defining atom of each chi angle.

    Quirk kept from AlphaFold: a chi that a residue lacks is padded with atom index -1,
    so its one-hot lands on the last atom37 slot (OXT, 36) rather than being all zero.
    The UNK row is all zeros.
    """
    one_hot = np.zeros([restype_num + 1, atom_type_num, 4], dtype=np.float64)
    for restype, letter in enumerate(restypes):
        chis = chi_angles_atoms[restype_1to3[letter]]
        for chi in range(4):
            atom = atom_order[chis[chi][atom_index]] if chi < len(chis) else -1
            one_hot[restype, atom, chi] = 1.0
    return one_hot


chi_atom_1_one_hot = chi_angle_atom(1)
chi_atom_2_one_hot = chi_angle_atom(2)


def _make_chi_angles_atom_indices() -> np.ndarray:
    """[20, 4, 4] atom37 indices of the chi-defining atoms; missing chis are 0 (N)."""
    table = np.zeros([restype_num, 4, 4], dtype=np.int64)
    for restype, letter in enumerate(restypes):
        for chi, atoms in enumerate(chi_angles_atoms[restype_1to3[letter]]):
            table[restype, chi] = [atom_order[a] for a in atoms]
    return table


chi_angles_atom_indices = _make_chi_angles_atom_indices()


def _make_chi_groups_for_atom() -> dict[tuple[str, str], list[tuple[int, int]]]:
    """(resname, atom) -> [(chi index, position of the atom among its 4 atoms)]."""
    groups = collections.defaultdict(list)
    for resname, chis in chi_angles_atoms.items():
        for chi, atoms in enumerate(chis):
            for position, atom in enumerate(atoms):
                groups[(resname, atom)].append((chi, position))
    return dict(groups)


chi_groups_for_atom = _make_chi_groups_for_atom()


def _make_rigid_transformation_4x4(ex, ey, translation) -> np.ndarray:
    """4x4 homogeneous transform whose x axis is along `ex`, with `ey` in the xy plane.

    Computed in float64 (as AlphaFold does) and stored by the caller as float32.
    """
    ex_normalized = ex / np.linalg.norm(ex)
    ey_normalized = ey - np.dot(ey, ex_normalized) * ex_normalized
    ey_normalized /= np.linalg.norm(ey_normalized)
    ez_normalized = np.cross(ex_normalized, ey_normalized)
    m = np.stack([ex_normalized, ey_normalized, ez_normalized, translation]).T
    return np.concatenate([m, [[0.0, 0.0, 0.0, 1.0]]], axis=0)


def _make_atom_group_tables():
    """Per (restype, atom) rigid-group index, existence mask and local position.

    Returns (atom37_to_group [21,37], atom37_mask [21,37], atom37_positions [21,37,3],
    atom14_to_group [21,14], atom14_mask [21,14], atom14_positions [21,14,3]).
    UNK rows stay zero.
    """
    atom37_to_group = np.zeros([21, 37], dtype=np.int64)
    atom37_mask = np.zeros([21, 37], dtype=np.float32)
    atom37_positions = np.zeros([21, 37, 3], dtype=np.float32)
    atom14_to_group = np.zeros([21, 14], dtype=np.int64)
    atom14_mask = np.zeros([21, 14], dtype=np.float32)
    atom14_positions = np.zeros([21, 14, 3], dtype=np.float32)
    for restype, letter in enumerate(restypes):
        resname = restype_1to3[letter]
        for name, group, position in rigid_group_atom_positions[resname]:
            i37 = atom_order[name]
            i14 = restype_name_to_atom14_names[resname].index(name)
            atom37_to_group[restype, i37] = group
            atom37_mask[restype, i37] = 1
            atom37_positions[restype, i37] = position
            atom14_to_group[restype, i14] = group
            atom14_mask[restype, i14] = 1
            atom14_positions[restype, i14] = position
    return (atom37_to_group, atom37_mask, atom37_positions, atom14_to_group, atom14_mask, atom14_positions)


def _make_default_frames() -> np.ndarray:
    """[21, 8, 4, 4] float32: each rigid group's frame in its parent frame at zero torsion.

    Parents: groups 1-4 (pre-omega, phi, psi, chi1) hang off the backbone frame; chi2,
    chi3, chi4 hang off the previous chi frame. The pre-omega frame is the identity
    (it carries no heavy atoms). UNK is all zeros, as in AlphaFold.
    """
    frames = np.zeros([21, 8, 4, 4], dtype=np.float32)
    for restype, letter in enumerate(restypes):
        resname = restype_1to3[letter]
        pos = {name: np.array(p) for name, _, p in rigid_group_atom_positions[resname]}
        frames[restype, 0] = np.eye(4)
        frames[restype, 1] = np.eye(4)
        # phi rotates about CA->N; its frame sits on N.
        frames[restype, 2] = _make_rigid_transformation_4x4(
            ex=pos["N"] - pos["CA"], ey=np.array([1.0, 0.0, 0.0]), translation=pos["N"]
        )
        # psi rotates about CA->C; its frame sits on C.
        frames[restype, 3] = _make_rigid_transformation_4x4(
            ex=pos["C"] - pos["CA"], ey=pos["CA"] - pos["N"], translation=pos["C"]
        )
        if chi_angles_mask[restype][0]:
            a0, a1, a2 = (pos[n] for n in chi_angles_atoms[resname][0][:3])
            frames[restype, 4] = _make_rigid_transformation_4x4(ex=a2 - a1, ey=a0 - a1, translation=a2)
        # Each later chi axis starts at the previous frame's origin and ends at the
        # atom that is its third defining atom, expressed in the previous frame.
        for chi in range(1, 4):
            if chi_angles_mask[restype][chi]:
                axis_end = pos[chi_angles_atoms[resname][chi][2]]
                frames[restype, 4 + chi] = _make_rigid_transformation_4x4(
                    ex=axis_end, ey=np.array([-1.0, 0.0, 0.0]), translation=axis_end
                )
    return frames


(
    restype_atom37_to_rigid_group,
    restype_atom37_mask,
    restype_atom37_rigid_group_positions,
    restype_atom14_to_rigid_group,
    restype_atom14_mask,
    restype_atom14_rigid_group_positions,
) = _make_atom_group_tables()
restype_rigid_group_default_frame = _make_default_frames()


def _make_atom14_atom37_maps() -> tuple[np.ndarray, np.ndarray]:
    """Index maps between the atom14 and atom37 layouts, as AlphaFold's data pipeline
    builds them: [21, 14] atom14 -> atom37 and [21, 37] atom37 -> atom14 (int32).

    Absent atoms (and the whole UNK row) point at index 0; callers must mask.
    """
    to37 = np.zeros([21, 14], dtype=np.int32)
    to14 = np.zeros([21, 37], dtype=np.int32)
    for restype, letter in enumerate(restypes):
        names = restype_name_to_atom14_names[restype_1to3[letter]]
        for i14, name in enumerate(names):
            if name:
                to37[restype, i14] = atom_order[name]
                to14[restype, atom_order[name]] = i14
    return to37, to14


restype_atom14_to_atom37, restype_atom37_to_atom14 = _make_atom14_atom37_maps()


def _make_atom14_ambiguity_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tables for the symmetric atom-name swaps of `residue_atom_renaming_swaps`.

    Returns:
      is_ambiguous: [21, 14] float32, 1 for atoms that take part in a swap.
      swap_idx: [21, 14] int32, the atom14 slot each atom swaps with (itself if none).
      renaming_matrices: [21, 14, 14] float32 permutation matrices P with
        alt[j] = sum_i x[i] P[i, j] (AlphaFold's RENAMING_MATRICES).
    """
    is_ambiguous = np.zeros([21, 14], dtype=np.float32)
    swap_idx = np.tile(np.arange(14, dtype=np.int32), [21, 1])
    for resname, swaps in residue_atom_renaming_swaps.items():
        restype = restype_order[restype_3to1[resname]]
        names = restype_name_to_atom14_names[resname]
        for name1, name2 in swaps.items():
            i, j = names.index(name1), names.index(name2)
            is_ambiguous[restype, [i, j]] = 1
            swap_idx[restype, i], swap_idx[restype, j] = j, i
    renaming = np.zeros([21, 14, 14], dtype=np.float32)
    rows = np.arange(14)
    for restype in range(21):
        renaming[restype, rows, swap_idx[restype]] = 1
    return is_ambiguous, swap_idx, renaming


(restype_atom14_is_ambiguous, restype_atom14_ambiguous_atoms_swap_idx, restype_atom14_renaming_matrices) = (
    _make_atom14_ambiguity_tables()
)
# OpenFold's name for the same table.
restype_atom14_ambiguous_atoms = restype_atom14_is_ambiguous


def _make_rigidgroup_tables():
    """Tables AlphaFold's atom37_to_frames builds to derive ground-truth group frames.

    Returns:
      base_atom37_idx: [21, 8, 3] int32 atom37 indices of the three atoms that define
        each group frame (point on -x axis... see all_atom.atom37_to_frames); unused 0.
      group_mask: [21, 8] float32, groups that exist (backbone, psi, existing chis).
      is_ambiguous: [21, 8] float32, 1 on the last chi group of ASP/GLU/PHE/TYR.
      ambiguity_rot: [21, 8, 3, 3] float32, diag(1, -1, -1) there, identity elsewhere
        (a 180 degree flip about the group's x axis swaps the ambiguous names).
    """
    names = np.full([21, 8, 3], "", dtype=object)
    names[:, 0] = ["C", "CA", "N"]
    names[:, 3] = ["CA", "C", "O"]
    for restype, letter in enumerate(restypes):
        resname = restype_1to3[letter]
        for chi in range(4):
            if chi_angles_mask[restype][chi]:
                names[restype, chi + 4] = chi_angles_atoms[resname][chi][1:]
    base_atom37_idx = np.vectorize(lambda n: atom_order[n] if n else 0)(names)
    base_atom37_idx = base_atom37_idx.astype(np.int32)

    group_mask = np.zeros([21, 8], dtype=np.float32)
    group_mask[:, 0] = 1
    group_mask[:, 3] = 1
    group_mask[:20, 4:] = chi_angles_mask

    is_ambiguous = np.zeros([21, 8], dtype=np.float32)
    ambiguity_rot = np.tile(np.eye(3, dtype=np.float32), [21, 8, 1, 1])
    for resname in residue_atom_renaming_swaps:
        restype = restype_order[restype_3to1[resname]]
        last_chi = int(sum(chi_angles_mask[restype]) - 1)
        is_ambiguous[restype, last_chi + 4] = 1
        ambiguity_rot[restype, last_chi + 4, 1, 1] = -1
        ambiguity_rot[restype, last_chi + 4, 2, 2] = -1
    return base_atom37_idx, group_mask, is_ambiguous, ambiguity_rot


(
    restype_rigidgroup_base_atom37_idx,
    restype_rigidgroup_mask,
    restype_rigidgroup_is_ambiguous,
    restype_rigidgroup_ambiguity_rot,
) = _make_rigidgroup_tables()


def make_atom14_dists_bounds(
    overlap_tolerance: float = 1.5, bond_length_tolerance_factor: float = 15
) -> dict[str, np.ndarray]:
    """Allowed intra-residue atom-pair distances, used to flag violations.

    Non-bonded pairs get lower bound r_vdw(a) + r_vdw(b) - overlap_tolerance and upper
    bound 1e10; bonded pairs and 1-3 pairs across a bond angle get
    length +- bond_length_tolerance_factor * stddev.

    Returns:
      dict of float32 [21, 14, 14] arrays: 'lower_bound', 'upper_bound', 'stddev'
      (stddev is zero except for bonded and 1-3 pairs). Diagonal and absent atoms: 0.
    """
    lower = np.zeros([21, 14, 14], np.float32)
    upper = np.zeros([21, 14, 14], np.float32)
    stddev = np.zeros([21, 14, 14], np.float32)
    residue_bonds, residue_virtual_bonds, _ = load_stereo_chemical_props()
    for restype, letter in enumerate(restypes):
        resname = restype_1to3[letter]
        atom_list = restype_name_to_atom14_names[resname]
        for i, name_i in enumerate(atom_list):
            if not name_i:
                continue
            for j, name_j in enumerate(atom_list):
                if not name_j or i == j:
                    continue
                vdw_sum = van_der_waals_radius[name_i[0]] + van_der_waals_radius[name_j[0]]
                lower[restype, i, j] = vdw_sum - overlap_tolerance
                upper[restype, i, j] = 1e10
        for b in residue_bonds[resname] + residue_virtual_bonds[resname]:
            i, j = atom_list.index(b.atom1_name), atom_list.index(b.atom2_name)
            lo = b.length - bond_length_tolerance_factor * b.stddev
            hi = b.length + bond_length_tolerance_factor * b.stddev
            lower[restype, i, j] = lower[restype, j, i] = lo
            upper[restype, i, j] = upper[restype, j, i] = hi
            stddev[restype, i, j] = stddev[restype, j, i] = b.stddev
    return {"lower_bound": lower, "upper_bound": upper, "stddev": stddev}
