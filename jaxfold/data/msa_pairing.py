"""Pairing of per-chain MSA rows by species, as AlphaFold-Multimer v2.3.2 does.

Each chain of a heteromer carries, besides its unpaired MSA (``msa``, ``deletion_matrix``),
the alignment of its UniProt search (``msa_all_seq`` ``[N_all_seq, N_res]``,
``deletion_matrix_all_seq``, ``msa_species_identifiers_all_seq`` ``[N_all_seq]``; the
species is the mnemonic after ``_`` in ``tr|ACC|ENTRY_SPECIES``). Rows of different chains
from the same species are assumed to come from one organism's complex and are put side by
side, so that the Evoformer sees co-evolution across the interface.

:func:`create_paired_features` is DeepMind's ``msa_pairing.create_paired_features``:

1. per chain, rows are grouped by species (row 0, the query, has species ``''``);
2. for every species (sorted) found in at least two chains and with at most 600 rows in
   each of them, the rows of each chain are ranked by their identity to that chain's
   query (descending) and the first ``k`` of each are paired, ``k`` being the smallest
   number of rows of that species among the chains that have it; a chain without the
   species contributes its padding row (all gaps, appended after the last row);
3. the query rows form the first paired row; then rows paired across all chains, then
   across fewer, each group ordered by the product of its row indices (the indices
   stand in for e-values: hits come sorted by e-value).

:func:`deduplicate_unpaired_sequences` then drops unpaired rows that repeat a paired row
of the same chain (the unpaired query row included, so unpaired blocks start without it).

The sorts reproduce the numpy calls DeepMind's code makes through pandas (``sort_values``
with the default quicksort, which pandas runs on the reversed array for a descending
order; ``np.argsort`` default kind for the index products), so ties are broken the same
way on the same numpy; ``pandas`` itself is not needed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping, Sequence

import numpy as np

FeatureDict = MutableMapping[str, np.ndarray]

__all__ = [
    "MAX_ROWS_PER_SPECIES",
    "MSA_FEATURES",
    "MSA_GAP_IDX",
    "MSA_PAD_VALUES",
    "create_paired_features",
    "deduplicate_unpaired_sequences",
    "pair_sequences",
    "reorder_paired_rows",
]

# Gap index, the same in the HHblits alphabet (where the MSA still is) and in ours.
MSA_GAP_IDX = 21
# Species with more rows than this in any chain are not paired (DeepMind: "> 600").
MAX_ROWS_PER_SPECIES = 600

# Per-row MSA features and their padding values (DeepMind's MSA_PAD_VALUES).
MSA_PAD_VALUES = {
    "msa_all_seq": MSA_GAP_IDX,
    "msa_mask_all_seq": 1,
    "deletion_matrix_all_seq": 0,
    "deletion_matrix_int_all_seq": 0,
    "msa": MSA_GAP_IDX,
    "msa_mask": 1,
    "deletion_matrix": 0,
    "deletion_matrix_int": 0,
}
MSA_FEATURES = ("msa", "msa_mask", "deletion_matrix", "deletion_matrix_int")


def _text(value) -> str:
    """A species identifier as ``str`` (the pipeline keeps bytes, saved ``.npz`` unicode)."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _pad_row(feature: np.ndarray, name: str) -> np.ndarray:
    """``feature`` with one padding row appended (the row that a chain without a given
    species contributes to a pairing; indexed as ``-1``)."""
    if name in ("msa_all_seq", "msa_mask_all_seq", "deletion_matrix_all_seq", "deletion_matrix_int_all_seq"):
        padding = np.full((1, feature.shape[1]), MSA_PAD_VALUES[name], dtype=feature.dtype)
        return np.concatenate([feature, padding], axis=0)
    if name == "msa_species_identifiers_all_seq":
        padding = np.array([b"" if feature.dtype == object else ""], dtype=feature.dtype)
        return np.concatenate([feature, padding], axis=0)
    return feature


def _descending_order(values: np.ndarray) -> np.ndarray:
    """Indices sorting ``values`` descending, as pandas' ``sort_values(ascending=False)``.

    pandas (``nargsort``) reverses the array, argsorts it with the default ``quicksort``
    and reverses the result; doing the same keeps DeepMind's tie order.
    """
    index = np.arange(len(values))[::-1]
    return index[np.argsort(values[::-1], kind="quicksort")][::-1]


def _species_rows(chain: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Species -> this chain's ``msa_all_seq`` rows of it, ranked by identity to the query
    (most similar first). ``''`` (query, non-UniProt rows) is included."""
    if "msa_all_seq" not in chain or "msa_species_identifiers_all_seq" not in chain:
        raise ValueError(
            "MSA pairing needs msa_all_seq and msa_species_identifiers_all_seq "
            "(the UniProt alignment of every chain, uniprot_hits.sto)"
        )
    msa = np.asarray(chain["msa_all_seq"])
    species = [_text(s) for s in chain["msa_species_identifiers_all_seq"]]
    if msa.ndim != 2 or msa.shape[0] != len(species) or msa.shape[0] == 0:
        raise ValueError(
            f"msa_all_seq {msa.shape} and msa_species_identifiers_all_seq ({len(species)} rows) disagree or are empty"
        )
    query = msa[0]
    similarity = np.sum(query[None] == msa, axis=-1) / float(len(query))
    groups: dict[str, list[int]] = {}
    for row, name in enumerate(species):
        groups.setdefault(name, []).append(row)
    result = {}
    for name, rows in groups.items():
        rows = np.asarray(rows)
        result[name] = rows[_descending_order(similarity[rows])]
    return result


def pair_sequences(chains: Sequence[Mapping[str, np.ndarray]]) -> dict[int, np.ndarray]:
    """Paired row indices, grouped by the number of chains that have the species.

    Returns:
      ``{n: [P_n, num_chains] int array}`` for ``n`` in ``0..num_chains``; row ``-1``
      means the chain's padding row. ``n = num_chains`` starts with the query row
      ``[0, 0, ...]``.
    """
    num_chains = len(chains)
    per_chain = [_species_rows(chain) for chain in chains]
    common_species = sorted(set().union(*per_chain) - {""})
    paired: dict[int, list[np.ndarray]] = {n: [] for n in range(num_chains)}
    paired[num_chains] = [np.zeros(num_chains, dtype=int)]
    for species in common_species:
        present = [rows.get(species) for rows in per_chain]
        counts = [len(r) for r in present if r is not None]
        if len(counts) <= 1 or max(counts) > MAX_ROWS_PER_SPECIES:
            continue
        take = min(counts)
        columns = [r[:take] if r is not None else np.full(take, -1) for r in present]
        paired[len(counts)].extend(np.stack(columns, axis=1))
    return {n: np.array(rows, dtype=int).reshape(-1, num_chains) for n, rows in paired.items()}


def reorder_paired_rows(paired: Mapping[int, np.ndarray]) -> np.ndarray:
    """``[P, num_chains]``: rows paired across most chains first; within a group, by the
    absolute product of the row indices (DeepMind's proxy for the e-values)."""
    ordered = []
    for n in sorted(paired, reverse=True):
        rows = np.asarray(paired[n])
        if rows.size == 0:
            continue
        product = np.abs(np.array([np.prod(r) for r in rows]))
        ordered.extend(rows[np.argsort(product)])
    return np.array(ordered)


def create_paired_features(chains: Iterable[FeatureDict]) -> list[FeatureDict]:
    """Per-chain features whose ``*_all_seq`` arrays hold only the paired rows, aligned
    across chains (row ``i`` of every chain belongs to the same organism).

    Args:
      chains: per-chain feature dicts with ``msa_all_seq`` ``[N_all_seq, N_res]``,
        ``deletion_matrix_all_seq`` / ``deletion_matrix_int_all_seq`` and
        ``msa_species_identifiers_all_seq`` ``[N_all_seq]`` (row 0 = the query).

    Returns:
      New dicts (inputs untouched): every ``*_all_seq`` array indexed by the paired rows
      (``[P, ...]``, the same ``P`` for all chains) and ``num_alignments_all_seq = P``.
      With fewer than two chains the chains are returned unchanged.
    """
    chains = list(chains)
    if len(chains) < 2:
        return chains
    paired_rows = reorder_paired_rows(pair_sequences(chains))
    updated = []
    for chain_index, chain in enumerate(chains):
        new_chain = {k: v for k, v in chain.items() if "_all_seq" not in k}
        for name, value in chain.items():
            if name.endswith("_all_seq"):
                new_chain[name] = _pad_row(np.asarray(value), name)[paired_rows[:, chain_index]]
        new_chain["num_alignments_all_seq"] = np.asarray(len(paired_rows))
        updated.append(new_chain)
    return updated


def _as_int32_rows(msa: np.ndarray) -> np.ndarray:
    """``[N_seq, N_res]`` residue ids (HHblits alphabet, 0..21) as contiguous int32."""
    return np.ascontiguousarray(msa, dtype=np.int32)


def deduplicate_unpaired_sequences(chains: Sequence[FeatureDict]) -> list[FeatureDict]:
    """Drops the unpaired MSA rows (``msa`` and its per-row features) that repeat a paired
    row of the same chain; updates ``num_alignments``. Modifies and returns ``chains``."""
    for chain in chains:
        # Rows compared as bytes of one dtype: equal to DeepMind's tuple comparison, but
        # without a Python object per residue (unpaired MSAs can have 10^5 rows).
        paired = {row.tobytes() for row in _as_int32_rows(chain["msa_all_seq"])}
        keep = [i for i, row in enumerate(_as_int32_rows(chain["msa"])) if row.tobytes() not in paired]
        for name in MSA_FEATURES:
            if name in chain:
                chain[name] = chain[name][keep]
        chain["num_alignments"] = np.array(chain["msa"].shape[0], dtype=np.int32)
    return list(chains)
