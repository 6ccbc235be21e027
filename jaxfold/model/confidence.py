"""Confidence metrics from head logits: pLDDT, PAE, pTM and the ranking confidence.

Host-side numpy, as DeepMind's `alphafold/common/confidence.py` and `model.get_confidence_metrics`
(v2.3.2), with the same dtypes (pLDDT and pTM come out float64 because the bin centres are float64 there;
PAE keeps the logits' float32). Inputs may be numpy or JAX arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax, computed as `scipy.special.softmax` does (same dtype as `x`)."""
    shifted = np.exp(x - np.amax(x, axis=axis, keepdims=True))
    return shifted / np.sum(shifted, axis=axis, keepdims=True)


def compute_plddt(logits) -> np.ndarray:
    """Per-residue pLDDT in [0, 100] from `predicted_lddt` logits `[N, num_bins]` -> `[N]`.

    Expected value of the bin centres `(i + 0.5) / num_bins` under softmax(logits), times 100.
    """
    logits = np.asarray(logits)
    num_bins = logits.shape[-1]
    bin_width = 1.0 / num_bins
    bin_centers = np.arange(start=0.5 * bin_width, stop=1.0, step=bin_width)
    probs = _softmax(logits, axis=-1)
    return np.sum(probs * bin_centers[None, :], axis=-1) * 100


def _calculate_bin_centers(breaks: np.ndarray) -> np.ndarray:
    """Bin centres `[num_bins]` from the `num_bins - 1` bin edges, plus a catch-all bin one step beyond."""
    step = breaks[1] - breaks[0]
    bin_centers = breaks + step / 2
    return np.concatenate([bin_centers, [bin_centers[-1] + step]], axis=0)


def compute_predicted_aligned_error(logits, breaks) -> dict[str, np.ndarray]:
    """PAE from `predicted_aligned_error` logits `[N, N, num_bins]` and `breaks [num_bins - 1]`.

    Returns `aligned_confidence_probs [N, N, num_bins]`, `predicted_aligned_error [N, N]` (expected error in
    Angstrom; row = aligned frame, column = residue) and `max_predicted_aligned_error` (scalar, the last bin
    centre).
    """
    logits, breaks = np.asarray(logits), np.asarray(breaks)
    probs = _softmax(logits, axis=-1)
    bin_centers = _calculate_bin_centers(breaks)
    return {
        "aligned_confidence_probs": probs,
        "predicted_aligned_error": np.sum(probs * bin_centers, axis=-1),
        "max_predicted_aligned_error": np.asarray(bin_centers[-1]),
    }


def predicted_tm_score(logits, breaks, residue_weights=None, asym_id=None, interface: bool = False) -> np.ndarray:
    """Predicted TM-score (pTM), or interface pTM with `interface=True` and `asym_id` (Suppl. Sec. 1.9.7).

    Args:
      logits: `[N, N, num_bins]` predicted-aligned-error logits.
      breaks: `[num_bins - 1]` bin edges.
      residue_weights: `[N]` weights in [0, 1] (e.g. the sequence mask); default all ones. Unlike
        DeepMind's code (which builds its pair mask with `int(sum(residue_weights))` rows and so fails on
        zero weights), the pair mask here always has shape `[N, N]`; results are identical whenever
        DeepMind's code runs.
      asym_id: `[N]` chain ids, for `interface=True` only.

    Returns:
      Scalar: max over alignment frames of the weighted mean TM term (d0 from the weighted residue count,
      clipped at 19 residues).
    """
    logits, breaks = np.asarray(logits), np.asarray(breaks)
    if residue_weights is None:
        residue_weights = np.ones(logits.shape[0])
    residue_weights = np.asarray(residue_weights)

    bin_centers = _calculate_bin_centers(breaks)
    num_res = int(np.sum(residue_weights))
    clipped_num_res = max(num_res, 19)
    # d0 of Yang & Skolnick (2004), eqn. 5.
    d0 = 1.24 * (clipped_num_res - 15) ** (1.0 / 3) - 1.8

    probs = _softmax(logits, axis=-1)
    # `d0 ** 2` as a Python float keeps tm_per_bin in the bin centres' dtype (float32), which is what
    # DeepMind's `np.square(d0)` gave under NumPy 1.x value-based casting (the reference environment).
    tm_per_bin = 1.0 / (1 + np.square(bin_centers) / float(d0) ** 2)
    predicted_tm_term = np.sum(probs * tm_per_bin, axis=-1)

    pair_mask = np.ones(logits.shape[:2], dtype=bool)
    if interface:
        asym_id = np.asarray(asym_id)
        pair_mask = pair_mask * (asym_id[:, None] != asym_id[None, :])
    predicted_tm_term = predicted_tm_term * pair_mask

    pair_residue_weights = pair_mask * (residue_weights[None, :] * residue_weights[:, None])
    normed_residue_mask = pair_residue_weights / (1e-8 + np.sum(pair_residue_weights, axis=-1, keepdims=True))
    per_alignment = np.sum(predicted_tm_term * normed_residue_mask, axis=-1)
    return np.asarray(per_alignment[(per_alignment * residue_weights).argmax()])


def ranking_confidence(plddt, ptm=None, iptm=None, multimer_mode: bool = False) -> np.ndarray:
    """AlphaFold v2.3.2's model-ranking score.

    Monomer models (every `model_*` preset, `_ptm` ones included) rank by mean pLDDT; multimer models by
    `0.8 * ipTM + 0.2 * pTM`.
    """
    if multimer_mode:
        if ptm is None or iptm is None:
            raise ValueError("multimer ranking confidence needs both ptm and iptm")
        return 0.8 * np.asarray(iptm) + 0.2 * np.asarray(ptm)
    return np.mean(np.asarray(plddt))


def get_confidence_metrics(prediction_result: Mapping[str, Any], multimer_mode: bool = False) -> dict[str, Any]:
    """AlphaFold's `model.get_confidence_metrics`: the metrics added to a prediction result.

    `prediction_result` holds the heads' outputs: `predicted_lddt/logits` and, when present,
    `predicted_aligned_error/{logits, breaks}` (and `asym_id` in multimer mode). Returns `plddt`, then
    (with the PAE head) `aligned_confidence_probs`, `predicted_aligned_error`, `max_predicted_aligned_error`,
    `ptm` (and `iptm` for multimer), and `ranking_confidence`.
    """
    metrics: dict[str, Any] = {"plddt": compute_plddt(prediction_result["predicted_lddt"]["logits"])}
    if "predicted_aligned_error" in prediction_result:
        pae = prediction_result["predicted_aligned_error"]
        metrics.update(compute_predicted_aligned_error(pae["logits"], pae["breaks"]))
        metrics["ptm"] = predicted_tm_score(pae["logits"], pae["breaks"], asym_id=None)
        if multimer_mode:
            metrics["iptm"] = predicted_tm_score(pae["logits"], pae["breaks"], asym_id=pae["asym_id"], interface=True)
    metrics["ranking_confidence"] = ranking_confidence(
        metrics["plddt"], metrics.get("ptm"), metrics.get("iptm"), multimer_mode
    )
    return metrics
