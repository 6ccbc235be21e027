"""Sequence and MSA features, equal to AlphaFold v2.3.2's ``pipeline.make_*_features``.

* :func:`make_sequence_features` -> ``aatype`` (one-hot [L, 21], ``restypes`` + X order),
  ``between_segment_residues``, ``domain_name``, ``residue_index``, ``seq_length``,
  ``sequence``.
* :func:`make_msa_features` -> ``msa`` (HHblits alphabet ids, 21 = gap),
  ``deletion_matrix_int``, ``num_alignments``, ``msa_species_identifiers``; rows that
  repeat an earlier aligned sequence (in any of the MSAs) are dropped, the first
  occurrence wins, MSAs are visited in the order given.

String features are 1-element / per-row ``object`` arrays of UTF-8 ``bytes``, as in
AlphaFold. When the MSAs are given as a mapping keyed by database name, they are put in
AlphaFold's order (UniRef90, BFD, MGnify, then the rest) and AlphaFold's depth limits
are applied (UniRef90 10,000 rows, MGnify 501, query included).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping, Sequence

import numpy as np

from jaxfold.common import residue_constants
from jaxfold.data.parsers import Msa

FeatureDict = MutableMapping[str, np.ndarray]

DEFAULT_UNIREF_MAX_HITS = 10000
DEFAULT_MGNIFY_MAX_HITS = 501

_HHBLITS_X = residue_constants.HHBLITS_AA_TO_ID["X"]

# UniProtKB entry names: `tr|A0A146SKV9|A0A146SKV9_FUNHE`, `sp|P0C2L1|A3X1_LOXLA`; small
# BFD appends `_<n>`. The mnemonic species code after the last `_` is the identifier.
_UNIPROT_PATTERN = re.compile(
    r"^(?:tr|sp)\|"
    r"(?P<accession>[A-Za-z0-9]{6,10})(?:_\d)?\|"
    r"(?:[A-Za-z0-9]+)_"
    r"(?P<species>[A-Za-z0-9]{1,5})"
    r"(?:_\d+)?$"
)


def species_identifier(description: str) -> str:
    """Species code of an MSA row description (AlphaFold's ``msa_identifiers``).

    Only UniProtKB-style names (``tr|ACC|ENTRY_SPECIES``, optionally ``/start-end``)
    give one; anything else (UniRef90_..., MGnify, ColabFold) gives ``''``.
    """
    fields = description.split()
    if not fields:
        return ""
    name = fields[0].partition("/")[0]
    match = _UNIPROT_PATTERN.search(name.strip())
    return match["species"] if match else ""


def make_sequence_features(sequence: str, description: str, num_res: int) -> FeatureDict:
    """AlphaFold's sequence features for one chain."""
    if len(sequence) != num_res:
        raise ValueError(f"num_res={num_res} but the sequence has {len(sequence)} residues")
    return {
        "aatype": residue_constants.sequence_to_onehot(
            sequence=sequence, mapping=residue_constants.restype_order_with_x, map_unknown_to_x=True
        ),
        "between_segment_residues": np.zeros((num_res,), dtype=np.int32),
        "domain_name": np.array([description.encode("utf-8")], dtype=np.object_),
        "residue_index": np.array(range(num_res), dtype=np.int32),
        "seq_length": np.array([num_res] * num_res, dtype=np.int32),
        "sequence": np.array([sequence.encode("utf-8")], dtype=np.object_),
    }


def database_rank(name: str) -> int:
    """AlphaFold's MSA order: 0 UniRef90, 1 BFD (bfd_uniclust / bfd_uniref / small_bfd),
    2 MGnify, 3 anything else."""
    key = name.lower()
    if key.startswith("uniref90"):
        return 0
    if "bfd" in key:
        return 1
    if key.startswith("mgnify"):
        return 2
    return 3


def order_and_limit_msas(
    msas: Mapping[str, Msa],
    *,
    uniref_max_hits: int = DEFAULT_UNIREF_MAX_HITS,
    mgnify_max_hits: int = DEFAULT_MGNIFY_MAX_HITS,
) -> list[tuple[str, Msa]]:
    """Database-keyed MSAs in AlphaFold's order with AlphaFold's depth limits.

    Order: UniRef90, BFD-type (``bfd_uniclust``, ``bfd_uniref``, ``small_bfd``), MGnify,
    then all others in their given order. UniRef90 keeps at most ``uniref_max_hits`` rows
    and MGnify ``mgnify_max_hits`` (query included, as ``truncate_stockholm_msa``
    counts); the others are not limited (AlphaFold limits neither BFD search).
    """
    indexed = sorted(enumerate(msas.items()), key=lambda kv: (database_rank(kv[1][0]), kv[0]))
    ordered = []
    for _, (name, msa) in indexed:
        category = database_rank(name)
        if category == 0 and uniref_max_hits is not None:
            msa = msa.truncate(uniref_max_hits)
        elif category == 2 and mgnify_max_hits is not None:
            msa = msa.truncate(mgnify_max_hits)
        ordered.append((name, msa))
    return ordered


def _encode_row(sequence: str) -> list[int]:
    table = residue_constants.HHBLITS_AA_TO_ID
    # Unknown letters / symbols -> X, as the HHblits alphabet treats them.
    return [table.get(res, _HHBLITS_X) for res in sequence]


def make_msa_features(
    msas: Sequence[Msa] | Mapping[str, Msa],
    *,
    uniref_max_hits: int = DEFAULT_UNIREF_MAX_HITS,
    mgnify_max_hits: int = DEFAULT_MGNIFY_MAX_HITS,
) -> FeatureDict:
    """AlphaFold's MSA features from one or more MSAs (query = first row of the first).

    Args:
      msas: a sequence of :class:`Msa` used as given (AlphaFold passes
        ``(uniref90, bfd, mgnify)``), or a mapping ``database name -> Msa`` that is put in
        that order and depth-limited by :func:`order_and_limit_msas`.
      uniref_max_hits, mgnify_max_hits: depth limits for the mapping form.

    Raises:
      ValueError: no MSA, an empty MSA, or rows of different lengths.
    """
    if isinstance(msas, Mapping):
        msas = [
            m for _, m in order_and_limit_msas(msas, uniref_max_hits=uniref_max_hits, mgnify_max_hits=mgnify_max_hits)
        ]
    if not msas:
        raise ValueError("At least one MSA must be provided.")

    num_res = len(msas[0].sequences[0]) if len(msas[0]) else 0
    int_msa, deletion_matrix, species_ids = [], [], []
    seen = set()
    for msa_index, msa in enumerate(msas):
        if not msa:
            raise ValueError(f"MSA {msa_index} must contain at least one sequence.")
        for row, sequence in enumerate(msa.sequences):
            if sequence in seen:
                continue
            if len(sequence) != num_res or len(msa.deletion_matrix[row]) != num_res:
                raise ValueError(
                    f"MSA {msa_index} row {row} ({msa.descriptions[row]!r}) has "
                    f"{len(sequence)} columns and {len(msa.deletion_matrix[row])} "
                    f"deletion counts; the query has {num_res} residues."
                )
            seen.add(sequence)
            int_msa.append(_encode_row(sequence))
            deletion_matrix.append(msa.deletion_matrix[row])
            species_ids.append(species_identifier(msa.descriptions[row]).encode("utf-8"))

    num_alignments = len(int_msa)
    return {
        "deletion_matrix_int": np.array(deletion_matrix, dtype=np.int32),
        "msa": np.array(int_msa, dtype=np.int32),
        "num_alignments": np.array([num_alignments] * num_res, dtype=np.int32),
        "msa_species_identifiers": np.array(species_ids, dtype=np.object_),
    }


def make_sequence_and_msa_features(
    sequence: str, description: str, msas: Sequence[Msa] | Mapping[str, Msa], **limits
) -> dict[str, np.ndarray]:
    """Both feature sets of a monomer (AlphaFold's pipeline output minus templates)."""
    features = make_sequence_features(sequence, description, len(sequence))
    msa_features = make_msa_features(msas, **limits)
    if msa_features["msa"].shape[1] != len(sequence):
        raise ValueError(
            f"MSA has {msa_features['msa'].shape[1]} columns but the query sequence {len(sequence)} residues"
        )
    features.update(msa_features)
    return features
