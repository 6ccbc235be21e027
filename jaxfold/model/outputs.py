"""Nested model outputs -> the flat `a/b/c` keys of DeepMind's results (`structure_module/final_atom_positions`)."""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from jaxfold.common.geometry import Rigid, Vec3


def flatten_outputs(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested model outputs -> flat `a/b/c` keys; Vec3 become `x/y/z`, Rot3 `xx..zz`, Rigid `rot/trans`."""
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Rigid):
            value = {"rot": value.rot, "trans": value.trans}
        if isinstance(value, Vec3) or type(value).__name__ == "Rot3":
            value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        if isinstance(value, Mapping):
            flat.update(flatten_outputs(value, name + "/"))
        else:
            flat[name] = np.asarray(value)
    return flat
