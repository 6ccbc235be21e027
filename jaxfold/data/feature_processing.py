"""AlphaFold2 (v2.3.2 monomer) inference input pipeline, in NumPy.

Turns the raw features of AlphaFold's data pipeline (``pipeline.DataPipeline``:
one-hot ``aatype``, HHblits-coded ``msa``, ``deletion_matrix_int``, template
arrays, ...) into the processed, fixed-size batch the model consumes, as
AlphaFold's TF ``features.np_example_to_features`` does in ``eval`` mode
(``alphafold/model/tf/{input_pipeline,data_transforms}.py``):

non-ensembled (once per protein)
    correct_msa_restypes, add_distillation_flag(False), squeeze_features,
    make_seq_mask, make_msa_mask, make_hhblits_profile,
    make_random_crop_to_size_seed, [fix_templates_aatype, make_template_mask,
    make_pseudo_beta('template_')], make_atom14_masks
ensembled (once per batch slice; ``num_ensemble * (num_recycle + 1)`` slices
when ``resample_msa_in_recycling``, else ``num_ensemble``)
    sample_msa, make_masked_msa, nearest_neighbor_clusters,
    summarize_clusters, crop_extra_msa, make_msa_feat, select_feat,
    random_crop_to_size (templates only), make_fixed_size

The slices are stacked along a new leading axis.  Everything is deterministic
given ``seed`` (a NumPy ``SeedSequence``); DeepMind's TF random stream cannot be
reproduced, so the sampled features (MSA sample, BERT masking, extra-MSA crop,
``random_crop_to_size_seed``) match AlphaFold in distribution only.  Given the
same random choices (:class:`MsaSample`), :func:`ensembled_features` reproduces
AlphaFold's output exactly.

Public entry point: :func:`process_features`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxfold.common import residue_constants as rc

__all__ = [
    "FEATURE_SCHEMA",
    "MsaSample",
    "NUM_EXTRA_SEQ",
    "NUM_MSA_SEQ",
    "NUM_RES",
    "NUM_TEMPLATES",
    "ensembled_features",
    "nonensembled_features",
    "process_features",
    "sample_msa",
]

# Shape placeholders (alphafold/model/tf/shape_placeholders.py).
NUM_RES = "num residues placeholder"
NUM_MSA_SEQ = "msa placeholder"
NUM_EXTRA_SEQ = "extra msa placeholder"
NUM_TEMPLATES = "num templates placeholder"

# AlphaFold's `config.data.eval.feat`: the features kept in the processed batch
# (`select_feat`) and their shape schemas for `make_fixed_size`.  Features that
# only exist in training (ground-truth structure) are listed for completeness;
# the inference pipeline never produces them.
FEATURE_SCHEMA: dict[str, tuple[Any, ...]] = {
    "aatype": (NUM_RES,),
    "all_atom_mask": (NUM_RES, None),
    "all_atom_positions": (NUM_RES, None, None),
    "alt_chi_angles": (NUM_RES, None),
    "atom14_alt_gt_exists": (NUM_RES, None),
    "atom14_alt_gt_positions": (NUM_RES, None, None),
    "atom14_atom_exists": (NUM_RES, None),
    "atom14_atom_is_ambiguous": (NUM_RES, None),
    "atom14_gt_exists": (NUM_RES, None),
    "atom14_gt_positions": (NUM_RES, None, None),
    "atom37_atom_exists": (NUM_RES, None),
    "backbone_affine_mask": (NUM_RES,),
    "backbone_affine_tensor": (NUM_RES, None),
    "bert_mask": (NUM_MSA_SEQ, NUM_RES),
    "chi_angles": (NUM_RES, None),
    "chi_mask": (NUM_RES, None),
    "extra_deletion_value": (NUM_EXTRA_SEQ, NUM_RES),
    "extra_has_deletion": (NUM_EXTRA_SEQ, NUM_RES),
    "extra_msa": (NUM_EXTRA_SEQ, NUM_RES),
    "extra_msa_mask": (NUM_EXTRA_SEQ, NUM_RES),
    "extra_msa_row_mask": (NUM_EXTRA_SEQ,),
    "is_distillation": (),
    "msa_feat": (NUM_MSA_SEQ, NUM_RES, None),
    "msa_mask": (NUM_MSA_SEQ, NUM_RES),
    "msa_row_mask": (NUM_MSA_SEQ,),
    "pseudo_beta": (NUM_RES, None),
    "pseudo_beta_mask": (NUM_RES,),
    "random_crop_to_size_seed": (None,),
    "residue_index": (NUM_RES,),
    "residx_atom14_to_atom37": (NUM_RES, None),
    "residx_atom37_to_atom14": (NUM_RES, None),
    "resolution": (),
    "rigidgroups_alt_gt_frames": (NUM_RES, None, None),
    "rigidgroups_group_exists": (NUM_RES, None),
    "rigidgroups_group_is_ambiguous": (NUM_RES, None),
    "rigidgroups_gt_exists": (NUM_RES, None),
    "rigidgroups_gt_frames": (NUM_RES, None, None),
    "seq_length": (),
    "seq_mask": (NUM_RES,),
    "target_feat": (NUM_RES, None),
    "template_aatype": (NUM_TEMPLATES, NUM_RES),
    "template_all_atom_masks": (NUM_TEMPLATES, NUM_RES, None),
    "template_all_atom_positions": (NUM_TEMPLATES, NUM_RES, None, None),
    "template_backbone_affine_mask": (NUM_TEMPLATES, NUM_RES),
    "template_backbone_affine_tensor": (NUM_TEMPLATES, NUM_RES, None),
    "template_mask": (NUM_TEMPLATES,),
    "template_pseudo_beta": (NUM_TEMPLATES, NUM_RES, None),
    "template_pseudo_beta_mask": (NUM_TEMPLATES, NUM_RES),
    "template_sum_probs": (NUM_TEMPLATES, None),
    "true_msa": (NUM_MSA_SEQ, NUM_RES),
}

_HHBLITS_TO_OURS = np.asarray(rc.MAP_HHBLITS_AATYPE_TO_OUR_AATYPE, dtype=np.int32)
_F32 = np.float32
_TWO_OVER_PI = _F32(2.0 / np.pi)
_ONE_THIRD = _F32(1.0 / 3.0)


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _DataSettings:
    use_templates: bool
    max_templates: int
    subsample_templates: bool
    msa_clusters: int  # rows of the sampled MSA (max_msa_clusters, maybe - max_templates)
    max_extra_msa: int
    msa_cluster_features: bool
    masked_msa: tuple[float, float, float] | None  # (uniform, profile, same) probs
    replace_fraction: float
    num_slices: int


def _settings(config: Mapping[str, Any]) -> _DataSettings:
    if not isinstance(config, Mapping) or "data" not in config:
        raise TypeError(
            "config must be a jaxfold Config with a 'data' section "
            "(jaxfold.config.model_config(...)); got "
            f"{type(config).__name__}"
        )
    common, ev = config["data"]["common"], config["data"]["eval"]
    num_recycle = int(common["num_recycle"])
    model_cfg = config.get("model")
    if isinstance(model_cfg, Mapping) and "num_recycle" in model_cfg:
        if int(model_cfg["num_recycle"]) != num_recycle:
            raise ValueError(
                "inconsistent config: data.common.num_recycle="
                f"{num_recycle} but model.num_recycle={model_cfg['num_recycle']}; "
                "the batch needs one MSA sample per recycling iteration "
                "(set both, e.g. model_config(..., num_recycle=n))"
            )
    max_templates = int(ev["max_templates"])
    clusters = int(ev["max_msa_clusters"])
    if common["reduce_msa_clusters_by_max_templates"]:
        clusters -= max_templates  # as AlphaFold: regardless of use_templates
    if clusters < 1:
        raise ValueError(
            f"max_msa_clusters ({ev['max_msa_clusters']}) leaves {clusters} MSA "
            "rows after reduce_msa_clusters_by_max_templates "
            f"(max_templates={max_templates}); need at least 1 (the query)"
        )
    masked = common.get("masked_msa")
    masked_probs = None
    if masked is not None:
        masked_probs = (float(masked["uniform_prob"]), float(masked["profile_prob"]), float(masked["same_prob"]))
        if sum(masked_probs) > 1.0 + 1e-9 or min(masked_probs) < 0:
            raise ValueError(f"invalid data.common.masked_msa probabilities {masked_probs}")
    num_ensemble = int(ev["num_ensemble"])
    if num_ensemble < 1:
        raise ValueError(f"data.eval.num_ensemble must be >= 1; got {num_ensemble}")
    num_slices = num_ensemble * ((num_recycle + 1) if common["resample_msa_in_recycling"] else 1)
    return _DataSettings(
        use_templates=bool(common["use_templates"]),
        max_templates=max_templates,
        subsample_templates=bool(ev.get("subsample_templates", False)),
        msa_clusters=clusters,
        max_extra_msa=int(common["max_extra_msa"]),
        msa_cluster_features=bool(common["msa_cluster_features"]),
        masked_msa=masked_probs,
        replace_fraction=float(ev["masked_msa_replace_fraction"]),
        num_slices=num_slices,
    )


# ---------------------------------------------------------------------------
# Input parsing / validation (proteins_dataset.np_to_tensor_dict + squeeze)
# ---------------------------------------------------------------------------
def _as_array(raw: Mapping[str, Any], key: str) -> np.ndarray:
    return np.asarray(raw[key])


def _squeeze_last(x: np.ndarray, key: str, rank: int) -> np.ndarray:
    """Accept AlphaFold's optional trailing singleton axis; check the rank."""
    if x.ndim == rank + 1 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != rank:
        raise ValueError(f"raw feature {key!r} must have rank {rank}; got shape {x.shape}")
    return x


def _check_shape(x: np.ndarray, key: str, expected: tuple[int, ...], what: str) -> None:
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"raw feature {key!r} has shape {tuple(x.shape)}, expected {tuple(expected)} ({what})")


def _check_int_range(x: np.ndarray, key: str, lo: int, hi: int) -> np.ndarray:
    if x.size and not np.issubdtype(x.dtype, np.integer):
        if not np.all(np.equal(np.mod(x, 1), 0)):
            raise ValueError(f"raw feature {key!r} must hold integers")
    x = x.astype(np.int64)
    if x.size and (x.min() < lo or x.max() > hi):
        raise ValueError(f"raw feature {key!r} values must lie in [{lo}, {hi}]; got [{x.min()}, {x.max()}]")
    return x


def nonensembled_features(
    raw: Mapping[str, Any], config: Mapping[str, Any], seed: int | np.random.SeedSequence = 0
) -> dict[str, np.ndarray]:
    """AlphaFold's non-ensembled transforms, applied once per protein.

    Returns unpadded intermediate features: ``aatype`` (int32 [N]), ``msa``
    (int32 [S, N], our residue order), ``deletion_matrix`` (float32 [S, N]),
    ``msa_mask``, ``msa_row_mask``, ``hhblits_profile`` [N, 22], ``seq_mask``,
    ``residue_index``, ``between_segment_residues``, ``seq_length`` (int32
    scalar), ``is_distillation``, ``random_crop_to_size_seed`` (int32 [2], drawn
    from `seed`), the atom14/atom37 maps and, with templates, ``template_*``
    (unpadded, uncropped) plus ``template_mask`` and ``template_pseudo_beta*``.
    """
    s = _settings(config)
    if not isinstance(raw, Mapping):
        raise TypeError(f"raw features must be a mapping; got {type(raw).__name__}")
    required = ["aatype", "seq_length", "residue_index", "between_segment_residues", "msa"]
    missing = [k for k in required if k not in raw]
    if "deletion_matrix_int" not in raw and "deletion_matrix" not in raw:
        missing.append("deletion_matrix_int")
    if s.use_templates:
        missing += [
            k
            for k in (
                "template_aatype",
                "template_all_atom_positions",
                "template_all_atom_masks",
                "template_sum_probs",
                "template_domain_names",
            )
            if k not in raw
        ]
    if missing:
        raise KeyError(
            f"raw features lack {missing} (have {sorted(raw)})"
            + (
                "; config has data.common.use_templates=True"
                if s.use_templates and any(m.startswith("template_") for m in missing)
                else ""
            )
        )

    # --- sequence features -------------------------------------------------
    seq_length_raw = _as_array(raw, "seq_length").reshape(-1)
    if seq_length_raw.size == 0:
        raise ValueError("raw feature 'seq_length' is empty")
    num_res = int(seq_length_raw[0])
    if num_res < 1:
        raise ValueError(f"seq_length must be >= 1; got {num_res}")

    aatype_1hot = _as_array(raw, "aatype")
    _check_shape(aatype_1hot, "aatype", (num_res, 21), f"one-hot over 21 residue types for seq_length={num_res}")
    aatype = np.argmax(aatype_1hot, axis=-1).astype(np.int32)

    residue_index = _squeeze_last(_as_array(raw, "residue_index"), "residue_index", 1)
    _check_shape(residue_index, "residue_index", (num_res,), "seq_length")
    bsr = _squeeze_last(_as_array(raw, "between_segment_residues"), "between_segment_residues", 1)
    _check_shape(bsr, "between_segment_residues", (num_res,), "seq_length")

    # --- MSA -------------------------------------------------------------------
    msa = _squeeze_last(_as_array(raw, "msa"), "msa", 2)
    if msa.shape[0] < 1:
        raise ValueError("raw 'msa' has no rows; its first row must be the query")
    if msa.shape[1] != num_res:
        raise ValueError(
            f"MSA width {msa.shape[1]} != sequence length {num_res} (msa shape {msa.shape}, seq_length {num_res})"
        )
    if "num_alignments" in raw:
        num_alignments = int(_as_array(raw, "num_alignments").reshape(-1)[0])
        if num_alignments != msa.shape[0]:
            raise ValueError(f"num_alignments ({num_alignments}) != number of MSA rows ({msa.shape[0]})")
    msa = _check_int_range(msa, "msa", 0, 21)  # HHblits ids
    if "deletion_matrix_int" in raw:
        del_key = "deletion_matrix_int"
    else:
        del_key = "deletion_matrix"
    deletion_matrix = _squeeze_last(_as_array(raw, del_key), del_key, 2)
    _check_shape(deletion_matrix, del_key, msa.shape, "same as msa")
    deletion_matrix = deletion_matrix.astype(_F32)

    # correct_msa_restypes: HHblits order -> our order.
    msa = _HHBLITS_TO_OURS[msa]
    num_seq = msa.shape[0]

    # make_hhblits_profile (after restype correction, over the full MSA).
    flat = msa.astype(np.int64) + 22 * np.arange(num_res)[None, :]
    counts = np.bincount(flat.ravel(), minlength=22 * num_res).reshape(num_res, 22)
    hhblits_profile = (counts.astype(_F32) / _F32(num_seq)).astype(_F32)

    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    rng = np.random.default_rng(ss)
    ii = np.iinfo(np.int32)
    crop_seed = rng.integers(ii.min, ii.max, size=2, dtype=np.int32)

    out: dict[str, np.ndarray] = {
        "aatype": aatype,
        "between_segment_residues": bsr.astype(np.int32),
        "residue_index": residue_index.astype(np.int32),
        "seq_length": np.asarray(num_res, np.int32),
        "is_distillation": np.asarray(0.0, _F32),
        "msa": msa.astype(np.int32),
        "deletion_matrix": deletion_matrix,
        "seq_mask": np.ones([num_res], _F32),
        "msa_mask": np.ones([num_seq, num_res], _F32),
        "msa_row_mask": np.ones([num_seq], _F32),
        "hhblits_profile": hhblits_profile,
        "random_crop_to_size_seed": crop_seed,
    }

    # --- templates -------------------------------------------------------------
    if s.use_templates:
        names = _as_array(raw, "template_domain_names").reshape(-1)
        nt = names.shape[0]
        t_aatype = _as_array(raw, "template_aatype")
        _check_shape(
            t_aatype,
            "template_aatype",
            (nt, num_res, 22),
            "[num_templates, seq_length, 22] one-hot (HHblits order); num_templates = len(template_domain_names)",
        )
        t_pos = _as_array(raw, "template_all_atom_positions")
        _check_shape(t_pos, "template_all_atom_positions", (nt, num_res, 37, 3), "[num_templates, seq_length, 37, 3]")
        t_mask = _squeeze_last(_as_array(raw, "template_all_atom_masks"), "template_all_atom_masks", 3)
        _check_shape(t_mask, "template_all_atom_masks", (nt, num_res, 37), "[num_templates, seq_length, 37]")
        t_probs = _as_array(raw, "template_sum_probs")
        if t_probs.ndim == 1:
            t_probs = t_probs[:, None]
        _check_shape(t_probs, "template_sum_probs", (nt, 1), "[num_templates, 1]")
        # fix_templates_aatype: one-hot (HHblits order) -> our indices.
        t_aa = _HHBLITS_TO_OURS[np.argmax(t_aatype, axis=-1)] if nt else np.zeros([0, num_res], np.int32)
        t_aa = t_aa.astype(np.int32)
        t_pos = t_pos.astype(_F32)
        t_mask = t_mask.astype(_F32)
        # make_pseudo_beta('template_'): CA for glycine, CB otherwise.
        is_gly = t_aa == rc.restype_order["G"]
        ca, cb = rc.atom_order["CA"], rc.atom_order["CB"]
        out.update(
            {
                "template_aatype": t_aa,
                "template_all_atom_positions": t_pos,
                "template_all_atom_masks": t_mask,
                "template_sum_probs": t_probs.astype(_F32),
                "template_mask": np.ones([nt], _F32),
                "template_pseudo_beta": np.where(is_gly[..., None], t_pos[..., ca, :], t_pos[..., cb, :]).astype(_F32),
                "template_pseudo_beta_mask": np.where(is_gly, t_mask[..., ca], t_mask[..., cb]).astype(_F32),
            }
        )

    out.update(_atom14_masks(aatype))
    return out


def _atom14_masks(aatype: np.ndarray) -> dict[str, np.ndarray]:
    """AlphaFold's make_atom14_masks as NumPy table lookups (no JAX: this runs in data-loader workers).

    Unknown residues (20) have all-zero rows, as in AlphaFold's tables.
    """
    from jaxfold.common import residue_constants as rc  # noqa: PLC0415

    aatype = np.clip(np.asarray(aatype, np.int64), 0, 20)
    return {
        "atom14_atom_exists": np.asarray(rc.restype_atom14_mask, _F32)[aatype],
        "atom37_atom_exists": np.asarray(rc.restype_atom37_mask, _F32)[aatype],
        "residx_atom14_to_atom37": np.asarray(rc.restype_atom14_to_atom37, np.int32)[aatype],
        "residx_atom37_to_atom14": np.asarray(rc.restype_atom37_to_atom14, np.int32)[aatype],
    }


# ---------------------------------------------------------------------------
# Random choices of one ensembled slice
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class MsaSample:
    """The random choices AlphaFold's ensembled transforms make for one slice.

    Attributes:
      cluster_rows: int [S_c]: raw MSA rows of the sampled MSA (cluster
        centres), in order; ``cluster_rows[0] == 0`` (the query).
      extra_rows: int [S - S_c]: all remaining raw rows in random order.  The
        nearest-neighbour clustering uses all of them; the extra-MSA features
        keep the first ``max_extra_msa`` (AlphaFold's `crop_extra_msa`).
      bert_mask: bool [S_c, N] or None: positions replaced by `make_masked_msa`.
      bert_values: int [S_c, N] or None: replacement residues (0..22, 22 =
        mask token), used where `bert_mask`.
    """

    cluster_rows: np.ndarray
    extra_rows: np.ndarray
    bert_mask: np.ndarray | None = None
    bert_values: np.ndarray | None = None


def sample_msa(feats: Mapping[str, np.ndarray], config: Mapping[str, Any], rng: np.random.Generator) -> MsaSample:
    """Draw one slice's `sample_msa` / `make_masked_msa` / `crop_extra_msa` choices.

    Same distribution as AlphaFold: the query first, then a uniformly random
    ordering of the other rows (AlphaFold's two shuffles, `sample_msa` then
    `crop_extra_msa`, compose to one uniform permutation of the non-query rows);
    BERT positions i.i.d. with probability `masked_msa_replace_fraction`,
    replacements from ``uniform*U(20 aa) + profile*hhblits_profile +
    same*onehot(msa) + rest*[MASK]`` (AlphaFold's ``probs + 1e-10``).
    """
    s = _settings(config)
    msa = np.asarray(feats["msa"])
    num_seq, num_res = msa.shape
    num_sel = min(s.msa_clusters, num_seq)
    order = np.concatenate([[0], 1 + rng.permutation(num_seq - 1)]).astype(np.int64)
    cluster_rows, extra_rows = order[:num_sel], order[num_sel:]
    bert_mask = bert_values = None
    if s.masked_msa is not None:
        uniform, profile, same = s.masked_msa
        sel = msa[cluster_rows]
        probs = np.zeros([num_sel, num_res, 23], np.float64)
        probs[..., :20] += uniform * 0.05
        probs[..., :22] += profile * np.asarray(feats["hhblits_profile"], np.float64)[None]
        probs[..., :22] += same * np.eye(22)[sel]
        probs[..., 22] = 1.0 - uniform - profile - same
        probs += 1e-10  # AlphaFold samples from log(probs + 1e-10)
        probs /= probs.sum(-1, keepdims=True)
        bert_mask = rng.random([num_sel, num_res]) < s.replace_fraction
        u = rng.random([num_sel, num_res, 1])
        cdf = np.cumsum(probs, axis=-1)
        bert_values = np.minimum((u > cdf).sum(-1), 22).astype(np.int32)
    return MsaSample(cluster_rows=cluster_rows, extra_rows=extra_rows, bert_mask=bert_mask, bert_values=bert_values)


# ---------------------------------------------------------------------------
# Deterministic ensembled transforms
# ---------------------------------------------------------------------------
# Coefficients of Eigen's float atan polynomial (`patan_reduced_float`,
# Eigen/src/Core/arch/Default/GenericPacketMathFunctions.h), which TensorFlow's
# CPU kernel for tf.atan uses: atan(x) ~= x + x^3 * Q(x^2) on [0, 1].
_ATAN_Q = tuple(
    _F32(c)
    for c in (
        -0.3333314359188079833984375,
        0.19993579387664794921875,
        -0.14209578931331634521484375,
        0.1066047251224517822265625,
        -7.5408883392810821533203125e-2,
        4.3082617223262786865234375e-2,
        -1.62907354533672332763671875e-2,
        2.90188402868807315826416015625e-3,
    )
)


def _atan_f32(x: np.ndarray) -> np.ndarray:
    """float32 atan evaluated as Eigen (hence TF on CPU) does, op for op.

    NumPy's correctly rounded float32 arctan differs from TF's by 1 ulp for
    some inputs (e.g. atan(1) = 0.7853982 vs TF's 0.7853981), so AlphaFold's
    deletion features (atan(d/3)*2/pi) would not match bit for bit.  Multiply-
    adds are unfused, as in TF's x86 pip builds (AVX without FMA).
    """
    x = np.asarray(x, _F32)
    ax = np.abs(x)
    large = ax > _F32(1.0)
    with np.errstate(divide="ignore"):
        r = np.where(large, _F32(1.0) / ax, ax).astype(_F32)
    q0, q2, q4, q6, q8, q10, q12, q14 = _ATAN_Q
    x2 = r * r
    x4 = x2 * x2
    q_odd = q14 * x4 + q10
    q_even = q12 * x4 + q8
    q_odd = q_odd * x4 + q6
    q_even = q_even * x4 + q4
    q_odd = q_odd * x4 + q2
    q_even = q_even * x4 + q0
    q = q_odd * x2 + q_even
    p = q * (r * x2) + r
    p = np.where(large, _F32(np.pi / 2) - p, p)
    return np.copysign(p, x).astype(_F32)


def _deletion_transform(x: np.ndarray) -> np.ndarray:
    """AlphaFold's atan(x / 3.) * (2. / pi) in float32, bit for bit as TF on CPU.

    TF's graph optimizer (constant folding, ReduceDivToReciprocalMul) turns the
    division by the constant 3 into a multiplication by float32(1/3); with
    exact division ~1 in 30 cluster_deletion_mean values differ by 1 ulp.
    """
    x = np.asarray(x, _F32)
    return (_atan_f32(x * _ONE_THIRD) * _TWO_OVER_PI).astype(_F32)


def _nearest_neighbor_clusters(
    msa: np.ndarray, msa_mask: np.ndarray, extra_msa: np.ndarray, extra_mask: np.ndarray, chunk: int = 1024
) -> np.ndarray:
    """Index of the closest cluster centre (weighted Hamming agreement) per extra row.

    Agreement counts positions where both rows hold the same residue, gap and
    [MASK] agreements weighted 0 (AlphaFold's gap_agreement_weight=0); ties go
    to the lowest cluster index (tf.argmax).
    """
    num_c, num_res = msa.shape
    num_e = extra_msa.shape[0]
    if num_e == 0:
        return np.zeros([0], np.int32)
    weights = np.ones([23], _F32)
    weights[21:] = 0.0
    sample = np.eye(23, dtype=_F32)[msa] * weights * msa_mask[..., None]
    sample = sample.reshape(num_c, num_res * 23)
    out = np.empty([num_e], np.int32)
    for start in range(0, num_e, chunk):
        e = extra_msa[start : start + chunk]
        e1h = np.eye(23, dtype=_F32)[e] * extra_mask[start : start + chunk, :, None]
        agreement = e1h.reshape(e.shape[0], -1) @ sample.T
        out[start : start + chunk] = np.argmax(agreement, axis=1)
    return out


def _segment_sum(values: np.ndarray, segment: np.ndarray, num_segments: int) -> np.ndarray:
    """tf.math.unsorted_segment_sum over axis 0 (float64 accumulation)."""
    trailing = values.shape[1:]
    size = int(np.prod(trailing)) if trailing else 1
    flat = values.reshape(values.shape[0], size).astype(np.float64)
    idx = segment.astype(np.int64)[:, None] * size + np.arange(size)[None, :]
    sums = np.bincount(idx.ravel(), weights=flat.ravel(), minlength=num_segments * size)
    return sums.reshape((num_segments,) + trailing)


def _pad_axis(x: np.ndarray, axis: int, size: int, key: str) -> np.ndarray:
    cur = x.shape[axis]
    if cur > size:
        raise ValueError(f"feature {key!r} has {cur} entries along axis {axis}, more than the fixed size {size}")
    if cur == size:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, size - cur)
    return np.pad(x, pad)


def ensembled_features(
    feats: Mapping[str, np.ndarray], config: Mapping[str, Any], sample: MsaSample, num_res: int | None = None
) -> dict[str, np.ndarray]:
    """One slice of the processed batch from non-ensembled `feats` and `sample`.

    Deterministic: AlphaFold's sample_msa, make_masked_msa, nearest-neighbour
    clustering, summarize_clusters, crop_extra_msa, make_msa_feat, select_feat,
    random_crop_to_size (templates) and make_fixed_size, with the random
    choices taken from `sample`.
    """
    s = _settings(config)
    n = int(feats["seq_length"])
    pad_res = n if num_res is None else int(num_res)
    if pad_res < n:
        raise ValueError(
            f"num_res={pad_res} is smaller than the sequence length {n}; "
            "residue cropping is not part of the inference pipeline"
        )
    msa_all = np.asarray(feats["msa"])
    num_seq = msa_all.shape[0]
    cl = np.asarray(sample.cluster_rows, np.int64)
    ex = np.asarray(sample.extra_rows, np.int64)
    if cl.size < 1 or cl[0] != 0:
        raise ValueError("MsaSample.cluster_rows must start with row 0 (the query)")
    if cl.size > s.msa_clusters:
        raise ValueError(f"MsaSample has {cl.size} cluster rows; config allows {s.msa_clusters}")
    if sorted(np.concatenate([cl, ex]).tolist()) != list(range(num_seq)):
        raise ValueError("MsaSample cluster_rows + extra_rows must partition the MSA rows")

    # sample_msa (keep_extra=True)
    msa = msa_all[cl]
    deletion = feats["deletion_matrix"][cl]
    msa_mask = feats["msa_mask"][cl]
    msa_row_mask = feats["msa_row_mask"][cl]
    extra_msa = msa_all[ex]
    extra_del = feats["deletion_matrix"][ex]
    extra_mask = feats["msa_mask"][ex]
    extra_row_mask = feats["msa_row_mask"][ex]

    out: dict[str, np.ndarray] = {}
    # make_masked_msa
    if s.masked_msa is not None:
        if sample.bert_mask is None or sample.bert_values is None:
            raise ValueError("config has data.common.masked_msa but the MsaSample carries no BERT choices")
        bm = np.asarray(sample.bert_mask, bool)
        bv = np.asarray(sample.bert_values)
        if bm.shape != msa.shape or bv.shape != msa.shape:
            raise ValueError(
                f"MsaSample.bert_mask/bert_values shapes {bm.shape}/{bv.shape} != sampled MSA shape {msa.shape}"
            )
        if bv.size and (bv.min() < 0 or bv.max() > 22):
            raise ValueError("MsaSample.bert_values must lie in [0, 22]")
        out["bert_mask"] = bm.astype(_F32)
        out["true_msa"] = msa.astype(np.int32)
        msa = np.where(bm, bv, msa).astype(np.int32)

    # nearest_neighbor_clusters + summarize_clusters
    msa_1hot = np.eye(23, dtype=_F32)[msa]
    msa_feat = [msa_1hot, np.clip(deletion, 0.0, 1.0)[..., None].astype(_F32), _deletion_transform(deletion)[..., None]]
    if s.msa_cluster_features:
        assign = _nearest_neighbor_clusters(msa, msa_mask, extra_msa, extra_mask)
        nc = msa.shape[0]
        # Counts and deletion sums are integer-valued: exact in any order.
        # AlphaFold writes 1e-6 + msa_mask + csum(mask); TF's graph optimizer
        # evaluates it as 1e-6 + (msa_mask + csum(mask)) (checked bit for bit
        # against DeepMind's features: 1/22.0000019, not 1/22).
        mask_counts = _F32(1e-6) + (msa_mask + _segment_sum(extra_mask, assign, nc).astype(_F32))
        extra_1hot_sum = np.bincount(
            ((assign.astype(np.int64)[:, None] * n + np.arange(n)[None, :]) * 23 + extra_msa).ravel(),
            weights=np.broadcast_to(extra_mask, extra_msa.shape).ravel().astype(np.float64),
            minlength=nc * n * 23,
        ).reshape(nc, n, 23)
        msa_sum = extra_1hot_sum.astype(_F32) + msa_1hot
        cluster_profile = (msa_sum / mask_counts[..., None]).astype(_F32)
        del_sum = _segment_sum(extra_mask * extra_del, assign, nc).astype(_F32) + deletion
        cluster_deletion_mean = (del_sum / mask_counts).astype(_F32)
        msa_feat += [cluster_profile, _deletion_transform(cluster_deletion_mean)[..., None]]

    # crop_extra_msa / delete_extra_msa
    if s.max_extra_msa:
        keep = slice(0, min(s.max_extra_msa, ex.size))
        extra_msa, extra_del = extra_msa[keep], extra_del[keep]
        extra_mask, extra_row_mask = extra_mask[keep], extra_row_mask[keep]
        out.update(
            {
                "extra_msa": extra_msa.astype(np.int32),
                "extra_msa_mask": extra_mask.astype(_F32),
                "extra_msa_row_mask": extra_row_mask.astype(_F32),
                "extra_has_deletion": np.clip(extra_del, 0.0, 1.0).astype(_F32),
                "extra_deletion_value": _deletion_transform(extra_del),
            }
        )

    # make_msa_feat
    aatype = np.asarray(feats["aatype"])
    has_break = np.clip(np.asarray(feats["between_segment_residues"], _F32), 0.0, 1.0)
    out["target_feat"] = np.concatenate([has_break[:, None], np.eye(21, dtype=_F32)[aatype]], axis=-1)
    out["msa_feat"] = np.concatenate(msa_feat, axis=-1).astype(_F32)
    out["msa_mask"] = msa_mask.astype(_F32)
    out["msa_row_mask"] = msa_row_mask.astype(_F32)

    # Non-ensembled features that survive select_feat.
    for k, v in feats.items():
        if k in FEATURE_SCHEMA and k not in out:
            out[k] = np.asarray(v)

    # random_crop_to_size: no residue crop (crop_size = seq_length); templates
    # are cut to max_templates (after a seeded shuffle if subsample_templates).
    if s.use_templates:
        nt = out["template_mask"].shape[0]
        start, perm = 0, np.arange(nt)
        if s.subsample_templates:
            seed_words = np.asarray(feats["random_crop_to_size_seed"]).view(np.uint32)
            trng = np.random.default_rng(seed_words.tolist())
            start = int(trng.integers(0, nt + 1))
            perm = np.argsort(trng.random(nt), kind="stable")
        size = min(nt - start, s.max_templates)
        for k in list(out):
            if k.startswith("template_"):
                out[k] = out[k][perm][start : start + size]
    out["seq_length"] = np.asarray(min(n, pad_res), np.int32)

    # make_fixed_size
    sizes = {
        NUM_RES: pad_res,
        NUM_MSA_SEQ: s.msa_clusters,
        NUM_EXTRA_SEQ: s.max_extra_msa,
        NUM_TEMPLATES: s.max_templates,
    }
    for k in list(out):
        schema = FEATURE_SCHEMA[k]
        v = out[k]
        if v.ndim != len(schema):
            raise AssertionError(f"rank mismatch for {k}: {v.shape} vs {schema}")
        for axis, dim in enumerate(schema):
            if dim in sizes:
                v = _pad_axis(v, axis, sizes[dim], k)
        out[k] = v
    return out


# ---------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------
def process_features(
    raw: Mapping[str, Any], config: Mapping[str, Any], seed: int, *, num_res: int | None = None
) -> dict[str, np.ndarray]:
    """Raw pipeline features -> the model's processed batch (AlphaFold eval mode).

    Args:
      raw: AlphaFold data-pipeline features (the layout of
        ``features_raw.npz``): ``aatype`` [N, 21] one-hot, ``msa`` [S, N]
        (HHblits ids, row 0 = query), ``deletion_matrix_int`` [S, N] (or float
        ``deletion_matrix``), ``residue_index``, ``between_segment_residues``,
        ``seq_length``, optional ``num_alignments``, and with
        ``config.data.common.use_templates`` the ``template_*`` arrays.  String
        features are ignored.
      config: ``jaxfold.config.model_config(...)``; uses ``config.data``.
      seed: seeds every random choice (NumPy SeedSequence); the same seed gives
        identical output.
      num_res: optional residue padding (>= N) for fixed compile shapes;
        default N (AlphaFold's ``crop_size = num_res``: no padding).

    Returns:
      ``{name: array}`` with a leading batch axis of
      ``num_ensemble * (num_recycle + 1)`` slices (``num_ensemble`` without
      ``resample_msa_in_recycling``), each slice an independent MSA sample;
      ints are int32, floats float32, key names as AlphaFold's.
    """
    s = _settings(config)
    ss = np.random.SeedSequence(int(seed))
    child_nonens, *child_slices = ss.spawn(1 + s.num_slices)
    feats = nonensembled_features(raw, config, child_nonens)
    slices = []
    for child in child_slices:
        rng = np.random.default_rng(child)
        slices.append(ensembled_features(feats, config, sample_msa(feats, config, rng), num_res=num_res))
    return {k: np.stack([sl[k] for sl in slices]) for k in slices[0]}


def is_processed(features) -> bool:
    """Processed model features (``msa_feat``, leading recycling axis) vs raw pipeline ones."""
    return "msa_feat" in features and "target_feat" in features
