"""Length buckets: pad chains to a few fixed lengths so many sequences share one compiled program.

XLA compiles one program per input shape, and AlphaFold's shapes are set by the chain length, so a
FASTA of 50 different lengths means 50 compilations. Padding every chain up to a *bucket* length
(with its masks zero) bounds the number of programs, and the padding does not change the prediction
beyond float round-off: every residue-mixing operation of the model (attention, triangle updates,
outer product mean, IPA, recycling) masks padded residues out, exactly as AlphaFold's own fixed-size
evaluation batches (``make_fixed_size``) rely on.

Bucket rule (:func:`bucket_length`): the chain length rounded up to a multiple of 32 up to 512
residues, of 64 up to 1024, of 128 beyond. The padding is at most 31 / 63 / 127 residues (under 25 %
of the work past 128 residues) and a 50-400 residue FASTA needs at most 12 programs per model.

* :func:`pad_features` pads AlphaFold's processed features (``features.npz`` layout, leading
  recycling axis) along every residue axis, as ``process_features(..., num_res=length)`` would.
* :func:`unpad_outputs` cuts the flat model outputs back to the true residues and recomputes the
  confidences that depend on the residue count: pTM (its d0 and its average run over residues), the
  ranking confidence (mean pLDDT) and, for consistency, every other ``confidence/*`` value, from the
  cut logits. pLDDT and PAE per residue are unchanged by the cut (they are per-residue / per-pair).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from jaxfold.data.feature_processing import FEATURE_SCHEMA, NUM_RES

__all__ = ["BUCKET_RULE", "OUTPUT_RESIDUE_AXES", "bucket_length", "group_by_bucket", "pad_features", "unpad_outputs"]

# (up to this length, round up to a multiple of this): the documented bucket rule.
BUCKET_RULE: tuple[tuple[float, int], ...] = ((512, 32), (1024, 64), (math.inf, 128))

# Residue axes of the flat outputs of `jaxfold.model.run_alphafold` (no recycling axis). Keys ending in
# '/' are prefixes. An output not listed here is an error in `unpad_outputs`, never silently left padded.
OUTPUT_RESIDUE_AXES: dict[str, tuple[int, ...]] = {
    "distogram/bin_edges": (),
    "distogram/logits": (0, 1),
    "experimentally_resolved/logits": (0,),
    "masked_msa/logits": (1,),
    "predicted_aligned_error/breaks": (),
    "predicted_aligned_error/logits": (0, 1),
    "predicted_lddt/logits": (0,),
    "representations/msa": (1,),
    "representations/msa_first_row": (0,),
    "representations/pair": (0, 1),
    "representations/single": (0,),
    "representations/structure_module": (0,),
    "structure_module/final_affines": (0,),
    "structure_module/final_atom14_mask": (0,),
    "structure_module/final_atom14_positions": (0,),
    "structure_module/final_atom_mask": (0,),
    "structure_module/final_atom_positions": (0,),
    "structure_module/traj": (1,),  # [num_layer, N, 7]
    "structure_module/sidechains/": (1,),  # [num_layer, N, ...]
    "features/": (0,),  # first recycling slice, as inference.predict adds
    "confidence/plddt": (0,),
    "confidence/aligned_confidence_probs": (0, 1),
    "confidence/predicted_aligned_error": (0, 1),
    "confidence/max_predicted_aligned_error": (),
    "confidence/ptm": (),
    "confidence/iptm": (),
    "confidence/ranking_confidence": (),
}


def bucket_length(num_res: int, rule: str = "auto") -> int:
    """The padded length for a chain of ``num_res`` residues.

    ``rule='auto'``: :data:`BUCKET_RULE` (multiples of 32 up to 512, of 64 up to 1024, of 128 beyond);
    ``rule='none'``: ``num_res`` itself (exact shapes).
    """
    num_res = int(num_res)
    if num_res < 1:
        raise ValueError(f"a chain needs at least one residue, got num_res={num_res}")
    if rule == "none":
        return num_res
    if rule != "auto":
        raise ValueError(f"bucket rule must be 'auto' or 'none', got {rule!r}")
    for limit, step in BUCKET_RULE:
        if num_res <= limit:
            return -(-num_res // step) * step
    raise AssertionError("unreachable: the last rule has no limit")


def group_by_bucket(lengths: Iterable[int], rule: str = "auto") -> dict[int, list[int]]:
    """``{bucket length: [indices into lengths]}``, buckets ascending, each list by ascending length
    (a stable sort: equal lengths keep their input order)."""
    lengths = [int(n) for n in lengths]
    groups: dict[int, list[int]] = {}
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        groups.setdefault(bucket_length(lengths[i], rule), []).append(i)
    return dict(sorted(groups.items()))


def _num_res(features: Mapping[str, np.ndarray]) -> int:
    if "aatype" not in features:
        raise ValueError("processed features need 'aatype' [num_slices, N_res] to know the chain length")
    aatype = np.asarray(features["aatype"])
    if aatype.ndim != 2:
        raise ValueError(
            f"processed features have a leading recycling axis: aatype must be "
            f"[num_slices, N_res], got shape {aatype.shape}"
        )
    return int(aatype.shape[1])


def pad_features(features: Mapping[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
    """Pads processed features `[num_slices, ...]` to ``length`` residues along every residue axis.

    Every padded entry is zero (masks included), as AlphaFold's ``make_fixed_size``; ``seq_length``
    keeps the true length. The result equals ``process_features(raw, config, seed, num_res=length)``.
    Residue axes come from ``feature_processing.FEATURE_SCHEMA`` (shifted by the recycling axis); a
    feature it does not know is an error rather than a guess.
    """
    num_res = _num_res(features)
    length = int(length)
    if length < num_res:
        raise ValueError(f"cannot pad {num_res} residues to length {length}: padding never crops")
    out = {}
    for key, value in features.items():
        value = np.asarray(value)
        if key == "num_iter_recycling" or value.dtype.kind not in "biuf":
            out[key] = value
            continue
        if key not in FEATURE_SCHEMA:
            raise ValueError(
                f"pad_features: unknown feature {key!r} (shape {value.shape}); its residue axes "
                "are not in feature_processing.FEATURE_SCHEMA"
            )
        axes = [i + 1 for i, dim in enumerate(FEATURE_SCHEMA[key]) if dim == NUM_RES]
        pad = [(0, 0)] * value.ndim
        for axis in axes:
            if value.shape[axis] != num_res:
                raise ValueError(
                    f"pad_features: {key} has {value.shape[axis]} residues on axis {axis} "
                    f"(shape {value.shape}), aatype has {num_res}"
                )
            pad[axis] = (0, length - num_res)
        out[key] = np.pad(value, pad) if axes and length > num_res else value
    return out


def _residue_axes(key: str) -> tuple[int, ...]:
    if key in OUTPUT_RESIDUE_AXES:
        return OUTPUT_RESIDUE_AXES[key]
    for prefix, axes in OUTPUT_RESIDUE_AXES.items():
        if prefix.endswith("/") and key.startswith(prefix):
            return axes
    raise ValueError(
        f"unpad_outputs: unknown output {key!r}; declare its residue axes in jaxfold.data.buckets.OUTPUT_RESIDUE_AXES"
    )


def unpad_outputs(outputs: Mapping[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
    """Cuts flat model outputs of a padded run back to the first ``length`` (true) residues.

    Every residue axis (:data:`OUTPUT_RESIDUE_AXES`) is cut; then ``confidence/*`` is recomputed from
    the cut ``predicted_lddt`` / ``predicted_aligned_error`` logits with AlphaFold's formulas, so pTM and
    the ranking confidence are those of the true residues (on the padded logits pTM would average over
    padding and use the padded length in its d0).
    """
    from jaxfold.model.confidence import get_confidence_metrics  # noqa: PLC0415

    length = int(length)
    if length < 1:
        raise ValueError(f"length must be positive, got {length}")
    padded = None
    out = {}
    for key, value in outputs.items():
        value = np.asarray(value)
        axes = _residue_axes(key)
        index = [slice(None)] * value.ndim
        for axis in axes:
            if axis >= value.ndim:
                raise ValueError(f"unpad_outputs: {key} has shape {value.shape}, expected a residue axis {axis}")
            padded = value.shape[axis] if padded is None else padded
            if value.shape[axis] != padded:
                raise ValueError(
                    f"unpad_outputs: {key} has {value.shape[axis]} residues on axis {axis}, other outputs {padded}"
                )
            index[axis] = slice(0, length)
        out[key] = value[tuple(index)] if axes else value
    if padded is not None and length > padded:
        raise ValueError(f"cannot cut outputs of {padded} residues to length {length}")
    if "predicted_lddt/logits" in out:
        heads = {"predicted_lddt": {"logits": out["predicted_lddt/logits"]}}
        if "predicted_aligned_error/logits" in out:
            heads["predicted_aligned_error"] = {
                "logits": out["predicted_aligned_error/logits"],
                "breaks": out["predicted_aligned_error/breaks"],
            }
        for key, value in get_confidence_metrics(heads).items():
            out[f"confidence/{key}"] = np.asarray(value)
    return out
