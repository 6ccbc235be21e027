"""Per-chain multimer features -> the one batch AlphaFold-Multimer consumes.

:func:`pair_and_merge` is AlphaFold-Multimer v2.3.2's ``feature_processing.pair_and_merge``
and :func:`pad_msa` its ``pipeline_multimer.pad_msa``; together they turn the per-chain
features of :func:`jaxfold.data.multimer_pipeline.chain_features` (after
``convert_monomer_features`` and ``add_assembly_features``) into the model's batch:

1. per chain: float deletion matrices, ``deletion_mean``, dummy ``all_atom_*``,
   ``assembly_num_chains``, ``entity_mask``;
2. heteromers only (more than one entity): rows paired by species
   (:func:`jaxfold.data.msa_pairing.create_paired_features`), then unpaired rows that
   repeat a paired row dropped;
3. MSA cropping to AlphaFold's limits (:data:`MSA_CROP_SIZE` rows per chain, paired rows
   at most half of it and counted against the unpaired ones), at most
   :data:`MAX_TEMPLATES` templates per chain;
4. merging: templates padded to :data:`MAX_TEMPLATES` and concatenated along residues;
   chains of one entity merged densely (their MSAs side by side); then the unpaired MSAs
   of the entities block-diagonal (gaps off the diagonal), under the paired rows;
   ``cluster_bias_mask`` (1 on the first row of every block) and ``bert_mask``;
5. MSA restypes mapped from the HHblits alphabet to AlphaFold's, ``seq_mask``,
   ``msa_mask``, and only the features the model reads kept;
6. :func:`pad_msa`: at least 512 MSA rows (zero rows; the model samples 508 clusters +
   extra rows from them).

Output (``N`` residues of all chains, ``S`` MSA rows, ``T = 4``): ``aatype [N]`` int32,
``residue_index [N]`` int32, ``asym_id / sym_id / entity_id [N]`` float64,
``entity_mask [N]`` int32, ``seq_mask [N]`` float32, ``all_atom_mask [N, 37]`` int32,
``all_atom_positions [N, 37, 3]`` float64 (zeros), ``msa [S, N]`` int32,
``deletion_matrix / msa_mask / bert_mask [S, N]`` float32, ``cluster_bias_mask [S]``
float64, ``deletion_mean [N]`` float32, ``template_aatype [T, N]`` int64,
``template_all_atom_mask [T, N, 37]`` / ``template_all_atom_positions [T, N, 37, 3]``
float32, and the scalars ``seq_length``, ``num_alignments``, ``num_templates`` (int32),
``assembly_num_chains`` (int64): the dtypes DeepMind's pipeline gives, no recycling axis.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence

import numpy as np

from jaxfold.common import residue_constants
from jaxfold.data import msa_pairing
from jaxfold.data.msa_pairing import MSA_FEATURES, MSA_PAD_VALUES

FeatureDict = MutableMapping[str, np.ndarray]

__all__ = [
    "MAX_TEMPLATES",
    "MIN_MSA_ROWS",
    "MSA_CROP_SIZE",
    "REQUIRED_FEATURES",
    "crop_chains",
    "merge_chain_features",
    "pad_msa",
    "pair_and_merge",
]

MAX_TEMPLATES = 4
MSA_CROP_SIZE = 2048
# pipeline_multimer pads to 512 rows "to avoid zero-sized extra_msa" (508 clusters + 4).
MIN_MSA_ROWS = 512

# The features the multimer model is given (DeepMind's REQUIRED_FEATURES; the training-only
# ones that inference never makes are listed too, so that such inputs pass through).
REQUIRED_FEATURES = frozenset(
    {
        "aatype",
        "all_atom_mask",
        "all_atom_positions",
        "all_chains_entity_ids",
        "all_crops_all_chains_mask",
        "all_crops_all_chains_positions",
        "all_crops_all_chains_residue_ids",
        "assembly_num_chains",
        "asym_id",
        "bert_mask",
        "cluster_bias_mask",
        "deletion_matrix",
        "deletion_mean",
        "entity_id",
        "entity_mask",
        "mem_peak",
        "msa",
        "msa_mask",
        "num_alignments",
        "num_templates",
        "queue_size",
        "residue_index",
        "resolution",
        "seq_length",
        "seq_mask",
        "sym_id",
        "template_aatype",
        "template_all_atom_mask",
        "template_all_atom_positions",
    }
)

# How each feature is merged across chains (DeepMind's msa_pairing lists).
_SEQ_FEATURES = frozenset(
    {
        "residue_index",
        "aatype",
        "all_atom_positions",
        "all_atom_mask",
        "seq_mask",
        "between_segment_residues",
        "has_alt_locations",
        "has_hetatoms",
        "asym_id",
        "entity_id",
        "sym_id",
        "entity_mask",
        "deletion_mean",
        "prediction_atom_mask",
        "literature_positions",
        "atom_indices_to_group_indices",
        "rigid_group_default_frame",
    }
)
_TEMPLATE_FEATURES = ("template_aatype", "template_all_atom_positions", "template_all_atom_mask")
_CHAIN_FEATURES = frozenset({"num_alignments", "seq_length"})


def _base_name(name: str) -> str:
    return name.split("_all_seq")[0]


def _num_entities(chains: Sequence[Mapping[str, np.ndarray]]) -> int:
    """Distinct entity ids (0 = padding, not counted)."""
    ids = np.concatenate([np.unique(c["entity_id"][c["entity_id"] > 0]) for c in chains])
    return len(np.unique(ids))


def _process_unmerged_features(chains: Sequence[FeatureDict]) -> None:
    """Step 1, in place: what every chain needs before pairing and merging."""
    for chain in chains:
        for name in ("deletion_matrix_int", "deletion_matrix_int_all_seq"):
            if name in chain:
                chain[name.replace("_int", "")] = np.asarray(chain.pop(name), dtype=np.float32)
        chain["deletion_mean"] = np.mean(chain["deletion_matrix"], axis=0)
        # No structure at inference: standard atoms of each residue type, zero positions.
        all_atom_mask = residue_constants.STANDARD_ATOM_MASK[chain["aatype"]]
        chain["all_atom_mask"] = all_atom_mask
        chain["all_atom_positions"] = np.zeros(list(all_atom_mask.shape) + [3])
        chain["assembly_num_chains"] = np.asarray(len(chains))
    for chain in chains:
        chain["entity_mask"] = (chain["entity_id"] != 0).astype(np.int32)


def _crop_single_chain(
    chain: FeatureDict, msa_crop_size: int, pair_msa_sequences: bool, max_templates: int
) -> FeatureDict:
    msa_size = chain["num_alignments"]
    if pair_msa_sequences:
        msa_size_all_seq = chain["num_alignments_all_seq"]
        crop_all_seq = np.minimum(msa_size_all_seq, msa_crop_size // 2)
        # Paired rows that hold residues of this chain take room from its unpaired rows,
        # so that each chain's MSA stays about msa_crop_size deep.
        msa_all_seq = chain["msa_all_seq"][:crop_all_seq, :]
        num_non_gapped_pairs = np.sum(np.any(msa_all_seq != msa_pairing.MSA_GAP_IDX, axis=1))
        num_non_gapped_pairs = np.minimum(num_non_gapped_pairs, crop_all_seq)
        max_msa_crop_size = np.maximum(msa_crop_size - num_non_gapped_pairs, 0)
        crop = np.minimum(msa_size, max_msa_crop_size)
    else:
        crop = np.minimum(msa_size, msa_crop_size)

    include_templates = "template_aatype" in chain and max_templates
    if include_templates:
        templates_crop = np.minimum(chain["template_aatype"].shape[0], max_templates)
    for name in list(chain):
        base = _base_name(name)
        if base in _TEMPLATE_FEATURES:
            chain[name] = chain[name][:templates_crop, :]
        elif base in MSA_FEATURES:
            if "_all_seq" in name and pair_msa_sequences:
                chain[name] = chain[name][:crop_all_seq, :]
            else:
                chain[name] = chain[name][:crop, :]
    chain["num_alignments"] = np.asarray(crop, dtype=np.int32)
    if include_templates:
        chain["num_templates"] = np.asarray(templates_crop, dtype=np.int32)
    if pair_msa_sequences:
        chain["num_alignments_all_seq"] = np.asarray(crop_all_seq, dtype=np.int32)
    return chain


def crop_chains(
    chains: Sequence[FeatureDict],
    msa_crop_size: int = MSA_CROP_SIZE,
    pair_msa_sequences: bool = True,
    max_templates: int = MAX_TEMPLATES,
) -> list[FeatureDict]:
    """Step 3: each chain's MSA cut to ``msa_crop_size`` rows (paired rows: at most half,
    and those with residues of the chain count against its unpaired rows), templates to
    ``max_templates``. In place; returns the chains."""
    return [_crop_single_chain(c, msa_crop_size, pair_msa_sequences, max_templates) for c in chains]


def _block_diag(arrays: Sequence[np.ndarray], pad_value: float) -> np.ndarray:
    """2-D arrays on the diagonal of one array, ``pad_value`` elsewhere."""
    rows = sum(a.shape[0] for a in arrays)
    cols = sum(a.shape[1] for a in arrays)
    dtype = np.result_type(*arrays)
    out = np.full((rows, cols), pad_value, dtype=dtype)
    r = c = 0
    for a in arrays:
        out[r : r + a.shape[0], c : c + a.shape[1]] = a
        r += a.shape[0]
        c += a.shape[1]
    return out


def _merge_features(chains: Sequence[Mapping[str, np.ndarray]], pair_msa_sequences: bool) -> FeatureDict:
    """One dict from several chains: residue features concatenated, MSA features side by
    side (``pair_msa_sequences`` or paired rows) or block-diagonal, per-chain counts summed,
    anything else taken from the first chain."""
    merged = {}
    for name in chains[0]:
        values = [c[name] for c in chains]
        base = _base_name(name)
        if base in MSA_FEATURES:
            if pair_msa_sequences or "_all_seq" in name:
                merged[name] = np.concatenate(values, axis=1)
            else:
                merged[name] = _block_diag(values, MSA_PAD_VALUES[name])
        elif base in _SEQ_FEATURES:
            merged[name] = np.concatenate(values, axis=0)
        elif base in _TEMPLATE_FEATURES:
            merged[name] = np.concatenate(values, axis=1)
        elif base in _CHAIN_FEATURES:
            merged[name] = np.asarray(sum(values)).astype(np.int32)
        else:
            merged[name] = values[0]
    return merged


def _pad_templates(chains: Sequence[FeatureDict], max_templates: int) -> None:
    for chain in chains:
        for name in _TEMPLATE_FEATURES:
            if name in chain:
                value = chain[name]
                padding = [(0, 0)] * value.ndim
                padding[0] = (0, max_templates - value.shape[0])
                chain[name] = np.pad(value, padding, mode="constant")


def _merge_homomers_dense_msa(chains: Sequence[FeatureDict]) -> list[FeatureDict]:
    """Chains of one entity -> one dict with their MSAs side by side (entity id order)."""
    by_entity: dict[float, list[FeatureDict]] = {}
    for chain in chains:
        by_entity.setdefault(chain["entity_id"][0], []).append(chain)
    return [_merge_features(by_entity[e], pair_msa_sequences=True) for e in sorted(by_entity)]


def _add_post_merge_features(
    example: FeatureDict, chains: Sequence[FeatureDict], pair_msa_sequences: bool
) -> FeatureDict:
    """``seq_length``, ``num_alignments``, ``cluster_bias_mask``, ``bert_mask``."""
    example["seq_length"] = np.asarray(example["aatype"].shape[0], dtype=np.int32)
    example["num_alignments"] = np.asarray(example["msa"].shape[0], dtype=np.int32)
    msa_masks = [np.ones(c["msa"].shape, dtype=np.float32) for c in chains]
    if not pair_msa_sequences:
        # The first row of every block is its query: the cluster sampling always keeps it.
        biases = []
        for chain in chains:
            bias = np.zeros(chain["msa"].shape[0])
            bias[0] = 1
            biases.append(bias)
        example["cluster_bias_mask"] = np.concatenate(biases)
        example["bert_mask"] = _block_diag(msa_masks, pad_value=0)
    else:
        example["cluster_bias_mask"] = np.zeros(example["msa"].shape[0])
        example["cluster_bias_mask"][0] = 1
        paired = np.concatenate([np.ones(c["msa_all_seq"].shape, dtype=np.float32) for c in chains], axis=1)
        example["bert_mask"] = np.concatenate([paired, _block_diag(msa_masks, pad_value=0)], axis=0)
    return example


def merge_chain_features(
    chains: Sequence[FeatureDict], pair_msa_sequences: bool, max_templates: int = MAX_TEMPLATES
) -> FeatureDict:
    """Step 4: the cropped chains as one feature dict (see the module docstring)."""
    chains = list(chains)
    _pad_templates(chains, max_templates)
    chains = _merge_homomers_dense_msa(chains)
    example = _merge_features(chains, pair_msa_sequences=False)
    if pair_msa_sequences:
        for name in MSA_FEATURES:
            if name in example:
                example[name] = np.concatenate([example[name + "_all_seq"], example[name]], axis=0)
        example["num_alignments"] = np.array(example["msa"].shape[0], dtype=np.int32)
    return _add_post_merge_features(example, chains, pair_msa_sequences)


def _process_final(example: FeatureDict) -> FeatureDict:
    """Step 5."""
    hhblits_to_ours = np.asarray(residue_constants.MAP_HHBLITS_AATYPE_TO_OUR_AATYPE)
    example["msa"] = np.take(hhblits_to_ours, example["msa"], axis=0).astype(np.int32)
    example["seq_mask"] = (example["entity_id"] > 0).astype(np.float32)
    example["msa_mask"] = np.ones_like(example["msa"], dtype=np.float32)
    example["msa_mask"] *= example["seq_mask"][None]
    return {k: v for k, v in example.items() if k in REQUIRED_FEATURES}


def _check_chains(chains: Sequence[Mapping[str, np.ndarray]]) -> None:
    if not chains:
        raise ValueError("pair_and_merge: no chains")
    needed = ("aatype", "msa", "entity_id", "sym_id", "asym_id", "num_alignments")
    for index, chain in enumerate(chains):
        missing = [k for k in needed if k not in chain]
        if "deletion_matrix" not in chain and "deletion_matrix_int" not in chain:
            missing.append("deletion_matrix_int")
        if missing:
            raise ValueError(
                f"pair_and_merge: chain {index} lacks {', '.join(missing)} "
                "(expected convert_monomer_features + add_assembly_features "
                "output)"
            )
        num_res = chain["aatype"].shape[0]
        if chain["msa"].ndim != 2 or chain["msa"].shape[1] != num_res:
            raise ValueError(
                f"pair_and_merge: chain {index} has {num_res} residues but an msa of shape {chain['msa'].shape}"
            )


def pair_and_merge(
    all_chain_features: Mapping[str, Mapping[str, np.ndarray]] | Sequence[Mapping[str, np.ndarray]],
) -> FeatureDict:
    """Per-chain features -> one complex (steps 1-5 of the module docstring).

    Args:
      all_chain_features: per-chain features in assembly order (the mapping
        ``{'A_1': ..., 'B_1': ...}`` of ``add_assembly_features`` or its values). The
        inputs are copied, not modified.

    Returns:
      The merged features, before :func:`pad_msa`.
    """
    chains = list(all_chain_features.values() if isinstance(all_chain_features, Mapping) else all_chain_features)
    _check_chains(chains)
    chains = [dict(c) for c in chains]
    _process_unmerged_features(chains)
    pair_msa_sequences = _num_entities(chains) > 1
    if pair_msa_sequences:
        chains = msa_pairing.create_paired_features(chains)
        chains = msa_pairing.deduplicate_unpaired_sequences(chains)
    chains = crop_chains(
        chains, msa_crop_size=MSA_CROP_SIZE, pair_msa_sequences=pair_msa_sequences, max_templates=MAX_TEMPLATES
    )
    example = merge_chain_features(chains, pair_msa_sequences=pair_msa_sequences, max_templates=MAX_TEMPLATES)
    return _process_final(example)


def pad_msa(example: Mapping[str, np.ndarray], min_num_seq: int = MIN_MSA_ROWS) -> FeatureDict:
    """At least ``min_num_seq`` MSA rows: ``msa``, ``deletion_matrix``, ``bert_mask``,
    ``msa_mask`` and ``cluster_bias_mask`` padded with zeros (as DeepMind pads: the padded
    ``msa`` rows read residue 0, masked out by ``msa_mask`` = 0). Returns a new dict."""
    example = dict(example)
    num_seq = example["msa"].shape[0]
    if num_seq < min_num_seq:
        for name in ("msa", "deletion_matrix", "bert_mask", "msa_mask"):
            example[name] = np.pad(example[name], ((0, min_num_seq - num_seq), (0, 0)))
        example["cluster_bias_mask"] = np.pad(example["cluster_bias_mask"], ((0, min_num_seq - num_seq),))
    return example
