"""Multimer features of a complex from per-chain alignments (AlphaFold-Multimer v2.3.2).

The entry point for the command line and the Python API is :func:`complex_features`::

    features = complex_features(['KEVLFYLG...', 'ETFSDLWKLLPEN'],
                                [Path('msas/A'), Path('msas/B')],
                                template_mmcif_dir=None, info=info)
    # features: the batch of jaxfold's multimer model (DeepMind's processed layout, no
    # recycling axis); info['chains']: which input chain sits where in it.

It does what DeepMind's ``pipeline_multimer.DataPipeline.process`` does after its
searches, reading precomputed alignments instead:

1. chain IDs ``A, B, ...`` in input order; every distinct sequence is featurised once
   (a repeated sequence, a homomer copy, reuses the first copy's features and folder);
2. per chain (:func:`chain_features`): the monomer sequence / MSA features of
   :func:`jaxfold.data.pipeline.build_raw_features` from the chain's folder
   (``uniref90_hits.sto``, ``bfd_uniclust_hits.a3m`` / ``bfd_uniref_hits.a3m``,
   ``mgnify_hits.sto``, ...), templates from its hit file (``pdb_hits.sto`` /
   ``hmm_output.sto`` / ``*.hhr``) with AlphaFold-Multimer's ``HmmsearchHitFeaturizer``
   rules (:func:`multimer_template_features`) and, for heteromers, the UniProt alignment
   ``uniprot_hits.sto`` (at most 50,000 rows) as ``msa_all_seq``,
   ``deletion_matrix_int_all_seq``, ``msa_species_identifiers_all_seq``;
3. :func:`convert_monomer_features` (one-hot ``aatype`` -> indices, template restypes to
   AlphaFold's order, scalar per-chain counts) and :func:`add_assembly_features`
   (``entity_id`` per distinct sequence in order of first appearance, ``sym_id`` the
   copy number, ``asym_id`` 1, 2, ...; the chains are regrouped by entity, so the batch
   holds all copies of entity 1 first, then entity 2, ...);
4. :func:`jaxfold.data.multimer_merge.pair_and_merge` (pairing by species, merging,
   cropping) and :func:`jaxfold.data.multimer_merge.pad_msa` (512 rows).

Folder layout per chain (what AlphaFold writes to ``<output>/msas/<chain_id>/`` and
users keep): ``uniprot_hits.sto`` (pairing; ``uniprot_hits.a3m`` is accepted too) and
the monomer files that :func:`jaxfold.data.msa_search.find_msa_files` reads.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxfold.common import residue_constants
from jaxfold.common.files import PathLike
from jaxfold.common.protein import PDB_MAX_CHAINS
from jaxfold.data import msa_features, msa_search, parsers, pipeline
from jaxfold.data.complex_fasta import chain_ids as make_chain_ids
from jaxfold.data.multimer_merge import pad_msa, pair_and_merge
from jaxfold.data.parsers import FastaRecord, Msa

logger = logging.getLogger(__name__)

FeatureDict = MutableMapping[str, np.ndarray]

__all__ = [
    "MAX_TEMPLATE_HITS",
    "PAIRING_MSA_FILES",
    "UNIPROT_MAX_HITS",
    "add_assembly_features",
    "all_seq_msa_features",
    "chain_features",
    "complex_features",
    "convert_monomer_features",
    "find_chain_msa_dirs",
    "int_id_to_str_id",
    "multimer_template_features",
    "multimer_templates_from_hits",
    "read_pairing_msa",
]

# run_alphafold.py's multimer settings: max_uniprot_hits = 50000, max_hits = 20 templates.
UNIPROT_MAX_HITS = 50000
MAX_TEMPLATE_HITS = 20
# The UniProt alignment used for pairing, looked for in this order.
PAIRING_MSA_FILES = ("uniprot_hits.sto", "uniprot_hits.a3m")
# Features of the UniProt alignment kept for pairing (DeepMind: MSA_FEATURES + species).
_ALL_SEQ_FEATURES = ("msa", "msa_mask", "deletion_matrix", "deletion_matrix_int", "msa_species_identifiers")
_TEMPLATE_KEYS = (
    "template_aatype",
    "template_all_atom_masks",
    "template_all_atom_positions",
    "template_domain_names",
    "template_sequence",
    "template_sum_probs",
)


def _text(value: Any) -> str:
    """A string feature (0-d / 1-element array of bytes or str) as ``str``."""
    value = np.asarray(value)
    item = value.reshape(-1)[0] if value.size else ""
    return item.decode("utf-8") if isinstance(item, bytes) else str(item)


# ---------------------------------------------------------------------------------------
# Per-chain conversion and assembly ids.
# ---------------------------------------------------------------------------------------


def convert_monomer_features(monomer_features: Mapping[str, np.ndarray], chain_id: str) -> FeatureDict:
    """Monomer pipeline features -> the per-chain layout of AlphaFold-Multimer.

    ``aatype`` ``[N, 21]`` one-hot -> ``[N]`` int32 indices; ``template_aatype``
    ``[T, N, 22]`` (HHblits one-hot) -> ``[T, N]`` int64 in AlphaFold's residue order;
    ``template_all_atom_masks`` -> ``template_all_atom_mask``; ``sequence``,
    ``domain_name``, ``num_alignments``, ``seq_length`` -> scalars; ``auth_chain_id``
    added. The MSA stays in the HHblits alphabet (mapped after merging).
    """
    converted: FeatureDict = {"auth_chain_id": np.asarray(chain_id, dtype=np.object_)}
    hhblits_to_ours = np.asarray(residue_constants.MAP_HHBLITS_AATYPE_TO_OUR_AATYPE, dtype=np.int64)
    for name, feature in monomer_features.items():
        if name in ("sequence", "domain_name", "num_alignments", "seq_length"):
            feature = np.asarray(feature[0], dtype=feature.dtype)
        elif name == "aatype":
            feature = np.argmax(feature, axis=-1).astype(np.int32)
        elif name == "template_aatype":
            feature = np.take(hhblits_to_ours, np.argmax(feature, axis=-1).astype(np.int32), axis=0)
        elif name == "template_all_atom_masks":
            name = "template_all_atom_mask"
        converted[name] = feature
    return converted


def int_id_to_str_id(num: int) -> str:
    """1 -> ``A``, 26 -> ``Z``, 27 -> ``AA``, 28 -> ``BA`` (DeepMind's reverse spreadsheet
    naming of entities in the assembly keys ``A_1``, ``B_1``, ...)."""
    if num <= 0:
        raise ValueError(f"Only positive integers allowed, got {num}.")
    num -= 1
    letters = []
    while num >= 0:
        letters.append(chr(num % 26 + ord("A")))
        num = num // 26 - 1
    return "".join(letters)


def add_assembly_features(all_chain_features: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, FeatureDict]:
    """Adds ``asym_id``, ``sym_id``, ``entity_id`` ``[N_chain]`` (float64) to every chain.

    Chains with the same ``sequence`` are one entity (ids 1, 2, ... in order of first
    appearance); ``sym_id`` counts the copies of an entity from 1; ``asym_id`` numbers
    the chains 1, 2, ... in the returned order, which groups the chains by entity.

    Args:
      all_chain_features: ``chain_id -> converted features`` in input order.

    Returns:
      ``'<entity letter>_<sym_id>' -> features`` (``A_1``, ``A_2``, ``B_1``, ...): new
      dicts; the inputs are not modified.
    """
    entity_of_sequence: dict[str, int] = {}
    groups: dict[int, list[Mapping[str, np.ndarray]]] = {}
    for chain in all_chain_features.values():
        if "sequence" not in chain or "seq_length" not in chain:
            raise ValueError(
                "add_assembly_features needs sequence and seq_length per chain (convert_monomer_features output)"
            )
        entity = entity_of_sequence.setdefault(_text(chain["sequence"]), len(entity_of_sequence) + 1)
        groups.setdefault(entity, []).append(chain)
    result: dict[str, FeatureDict] = {}
    asym_id = 1
    for entity, chains in groups.items():
        for sym_id, chain in enumerate(chains, start=1):
            chain = dict(chain)
            num_res = int(chain["seq_length"])
            chain["asym_id"] = asym_id * np.ones(num_res)
            chain["sym_id"] = sym_id * np.ones(num_res)
            chain["entity_id"] = entity * np.ones(num_res)
            result[f"{int_id_to_str_id(entity)}_{sym_id}"] = chain
            asym_id += 1
    return result


# ---------------------------------------------------------------------------------------
# The UniProt alignment used for pairing.
# ---------------------------------------------------------------------------------------


def read_pairing_msa(chain_dir: PathLike, sequence: str, *, max_hits: int = UNIPROT_MAX_HITS) -> Msa:
    """The UniProt alignment of one chain (``uniprot_hits.sto``, else ``.a3m``).

    Raises:
      FileNotFoundError: neither file exists (the message names the folder and the files).
      jaxfold.data.parsers.ParseError: a malformed file (names the file and line).
      ValueError: the file's first row is not ``sequence`` (names the file).
    """
    chain_dir = Path(chain_dir)
    path = next((chain_dir / n for n in PAIRING_MSA_FILES if (chain_dir / n).is_file()), None)
    if path is None:
        raise FileNotFoundError(
            f"{chain_dir / PAIRING_MSA_FILES[0]} not found: a heteromer needs the UniProt "
            "alignment of every chain to pair MSA rows by species "
            f"({' or '.join(PAIRING_MSA_FILES)} in {chain_dir})"
        )
    msa = msa_search.read_msa(path, max_hits)
    query = msa.sequences[0]
    if len(query) != len(sequence) or any(a != b and "X" not in (a, b) for a, b in zip(query.upper(), sequence)):
        raise ValueError(
            f"{path}: its first row ({len(query)} columns) is not the chain "
            f"sequence ({len(sequence)} residues); the alignment belongs to "
            "another sequence"
        )
    return msa


def all_seq_msa_features(msa: Msa) -> FeatureDict:
    """``msa_all_seq``, ``deletion_matrix_int_all_seq``, ``msa_species_identifiers_all_seq``
    of a UniProt alignment (rows deduplicated as in the monomer MSA features)."""
    features = msa_features.make_msa_features([msa])
    return {f"{k}_all_seq": v for k, v in features.items() if k in _ALL_SEQ_FEATURES}


# ---------------------------------------------------------------------------------------
# Templates (AlphaFold-Multimer's HmmsearchHitFeaturizer rules).
# ---------------------------------------------------------------------------------------


def _default_template_features(num_res: int) -> FeatureDict:
    """AlphaFold-Multimer's template features when no hit gives one: one all-zero template."""
    return {
        "template_aatype": np.zeros((1, num_res, len(residue_constants.restypes_with_x_and_gap)), np.float32),
        "template_all_atom_masks": np.zeros((1, num_res, residue_constants.atom_type_num), np.float32),
        "template_all_atom_positions": np.zeros((1, num_res, residue_constants.atom_type_num, 3), np.float32),
        "template_domain_names": np.array([b""], dtype=np.object_),
        "template_sequence": np.array([b""], dtype=np.object_),
        "template_sum_probs": np.array([0], dtype=np.float32),
    }


def multimer_template_features(
    sequence: str,
    hits_path: PathLike | None,
    mmcif_dir: PathLike | None,
    max_template_date: str | datetime.date | None = None,
    *,
    max_hits: int = MAX_TEMPLATE_HITS,
    info: dict[str, Any] | None = None,
) -> FeatureDict:
    """Template features of one chain from a hit file (``pdb_hits.sto`` / ``hmm_output.sto``
    from hmmsearch, or an HHsearch ``.hhr``), by :func:`multimer_templates_from_hits`.
    Without ``hits_path`` or ``mmcif_dir``: AlphaFold-Multimer's one all-zero template."""
    if hits_path is None or mmcif_dir is None:
        if info is not None:
            info.update(templates=[], template_errors=[], template_warnings=[])
        return _default_template_features(len(sequence))
    hits = pipeline.read_template_hits(hits_path, sequence)
    return multimer_templates_from_hits(sequence, hits, mmcif_dir, max_template_date, max_hits=max_hits, info=info)


def multimer_templates_from_hits(
    sequence: str,
    hits: Sequence[parsers.TemplateHit],
    mmcif_dir: PathLike,
    max_template_date: str | datetime.date | None = None,
    *,
    max_hits: int = MAX_TEMPLATE_HITS,
    info: dict[str, Any] | None = None,
) -> FeatureDict:
    """Template features of one chain as AlphaFold-Multimer's ``HmmsearchHitFeaturizer``
    makes them (each hit through :class:`jaxfold.data.templates.TemplateFeaturizer`).

    Unlike the monomer featuriser, a hit whose template sequence repeats an earlier
    template's is skipped (it does not count towards ``max_hits``), and when no hit gives
    a template the result is one all-zero template, not zero templates. Hits are taken in
    the given order (hmmsearch), or by decreasing ``sum_probs`` when they have it (HHsearch).

    ``info`` (optional) receives ``templates`` (names used), ``template_errors`` and
    ``template_warnings``.
    """
    from jaxfold.data import templates  # noqa: PLC0415  (templates pulls in Biopython)

    info = {} if info is None else info
    info.update(templates=[], template_errors=[], template_warnings=[])
    hits = list(hits)
    if hits and hits[0].sum_probs is not None:
        hits = sorted(hits, key=lambda h: h.sum_probs, reverse=True)
    featurizer = templates.TemplateFeaturizer(mmcif_dir, max_template_date or datetime.date.today(), max_hits=1)
    seen: set[str] = set()
    collected: list[Mapping[str, np.ndarray]] = []
    for hit in hits:
        if len(seen) >= max_hits:
            break
        result = featurizer.get_templates(sequence, [hit])
        info["template_errors"].extend(result.errors)
        info["template_warnings"].extend(result.warnings)
        features = result.features
        if features["template_aatype"].shape[0] == 0:
            continue
        key = _text(features["template_sequence"])
        if key in seen:
            continue
        seen.add(key)
        collected.append(features)
    if not collected:
        return _default_template_features(len(sequence))
    stacked = {}
    for name in _TEMPLATE_KEYS:
        values = [c[name] for c in collected]
        if values[0].dtype == object:
            array = np.empty((len(values),), dtype=object)
            array[:] = [v[0] for v in values]
            stacked[name] = array
        else:
            stacked[name] = np.concatenate(values, axis=0)
    info["templates"] = [_text(n) for n in stacked["template_domain_names"]]
    return stacked


# ---------------------------------------------------------------------------------------
# One chain, then the complex.
# ---------------------------------------------------------------------------------------


def _search_pairing_msa(
    record: FastaRecord, uniprot_database: PathLike | Sequence[PathLike], chain_dir: Path | None, cpus: int
) -> Msa:
    """jackhmmer of the chain against UniProt (AlphaFold's flags, at most 50,000 rows);
    written to ``chain_dir/uniprot_hits.sto`` when a folder is given."""
    sto = msa_search.jackhmmer_search(record, uniprot_database, cpus=cpus)
    sto = parsers.truncate_stockholm_text(sto, UNIPROT_MAX_HITS)
    if chain_dir is not None:
        chain_dir.mkdir(parents=True, exist_ok=True)
        tmp = chain_dir / f"{PAIRING_MSA_FILES[0]}.tmp"
        tmp.write_text(sto)
        tmp.replace(chain_dir / PAIRING_MSA_FILES[0])
    return parsers.parse_stockholm(sto, source="jackhmmer[uniprot]")


def chain_features(
    sequence: str,
    chain_id: str,
    msa_dir: PathLike | None = None,
    *,
    pair_msas: bool,
    msa_mode: str = "precomputed",
    databases: Mapping[str, Any] | None = None,
    uniprot_database: PathLike | Sequence[PathLike] | None = None,
    output_dir: PathLike | None = None,
    cpus: int = 1,
    template_mmcif_dir: PathLike | None = None,
    max_template_date: str | datetime.date | None = None,
    require_uniprot: bool = True,
    info: dict[str, Any] | None = None,
) -> FeatureDict:
    """Raw features of one chain of a complex (DeepMind's ``_process_single_chain``).

    ``msa_mode='precomputed'``: the monomer features of the folder ``msa_dir`` (see
    :func:`jaxfold.data.pipeline.build_raw_features`) and, when ``pair_msas``, its UniProt
    alignment (:func:`read_pairing_msa`). ``msa_mode='search'``: jackhmmer (pyhmmer)
    against ``databases`` (``{'uniref90': fasta, 'mgnify': fasta, ...}``) and, when
    ``pair_msas``, against ``uniprot_database``; with ``output_dir`` the alignments are
    written to ``output_dir/<chain_id>/`` (``*_hits.a3m``, ``uniprot_hits.sto``), which a
    later precomputed run reads back. The chain's ``domain_name`` is ``chain_<chain_id>``.

    Templates: :func:`multimer_template_features` with the hit file of the chain's folder
    (none without ``template_mmcif_dir``). With ``require_uniprot=False`` a missing UniProt
    alignment gives a query-only ``msa_all_seq`` (nothing of this chain is paired) instead
    of an error.

    Returns the features before :func:`convert_monomer_features`.
    """
    info = {} if info is None else info
    description = f"chain_{chain_id}"
    if msa_mode == "precomputed":
        if msa_dir is None or not Path(msa_dir).is_dir():
            raise FileNotFoundError(f"chain {chain_id}: alignment folder not found: {msa_dir}")
        chain_dir: Path | None = Path(msa_dir)
        record = FastaRecord(name=description, description=description, sequence=sequence)
        features = dict(pipeline.build_raw_features(record, msa_mode="precomputed", msa_dir=chain_dir, info=info))
    elif msa_mode == "search":
        # Named by the chain ID so that searches land in output_dir/<chain_id>/ (AlphaFold's
        # msas/A/ layout); the description still makes domain_name chain_<id>.
        record = FastaRecord(name=chain_id, description=description, sequence=sequence)
        chain_dir = Path(output_dir) / record.safe_name if output_dir is not None else None
        features = dict(
            pipeline.build_raw_features(
                record, msa_mode="search", databases=databases, output_dir=output_dir, cpus=cpus, info=info
            )
        )
    else:
        raise ValueError(f'unknown MSA mode {msa_mode!r} for a complex; expected "precomputed" or "search"')
    hits_path = None
    if template_mmcif_dir is not None and chain_dir is not None and chain_dir.is_dir():
        hits_path = pipeline.find_template_hits(record, chain_dir)
    info["template_hits_file"] = str(hits_path) if hits_path else None
    features.update(multimer_template_features(sequence, hits_path, template_mmcif_dir, max_template_date, info=info))
    if pair_msas:
        msa = None
        if msa_mode == "search" and uniprot_database is not None:
            msa = _search_pairing_msa(record, uniprot_database, chain_dir, cpus)
        elif msa_mode == "precomputed":
            try:
                msa = read_pairing_msa(chain_dir, sequence)
            except FileNotFoundError:
                if require_uniprot:
                    raise
        elif require_uniprot:
            raise ValueError(
                f"chain {chain_id}: a heteromer searched for MSAs needs a UniProt "
                "database to pair rows by species (uniprot_database=..., "
                "or require_uniprot=False to leave the chains unpaired)"
            )
        if msa is None:
            logger.warning("chain %s: no UniProt alignment; its rows are not paired.", chain_id)
            msa = Msa(sequences=[sequence], deletion_matrix=[[0] * len(sequence)], descriptions=[description])
        features.update(all_seq_msa_features(msa))
        info["uniprot_rows"] = int(features["msa_all_seq"].shape[0])
    return features


def find_chain_msa_dirs(
    msa_dir: PathLike, name: str, chain_ids: Sequence[str], sequences: Sequence[str] | None = None
) -> list[Path | None]:
    """The alignment folder of each chain of the complex ``name`` under ``msa_dir``.

    Looked for, per chain, in this order: ``<msa_dir>/<name>/msas/<chain_id>/``
    (AlphaFold's output layout), ``<msa_dir>/<name>/<chain_id>/``,
    ``<msa_dir>/<name>_<chain_id>/`` and ``<msa_dir>/<chain_id>/`` (``name`` is used as
    given and file-system-sanitised). With ``sequences``, a later copy of a sequence
    whose folder is missing gets None (the first copy's folder is used for it, as
    AlphaFold does).

    Raises:
      FileNotFoundError: a chain (first copy of its sequence) has no folder; the message
        lists the paths tried.
    """
    msa_dir = Path(msa_dir)
    names = list(dict.fromkeys([name, parsers.sanitize_name(name)]))
    found: list[Path | None] = []
    seen: set[str] = set()
    for index, chain_id in enumerate(chain_ids):
        tried = []
        for n in names:
            tried += [msa_dir / n / "msas" / chain_id, msa_dir / n / chain_id, msa_dir / f"{n}_{chain_id}"]
        tried.append(msa_dir / chain_id)
        folder = next((p for p in tried if p.is_dir()), None)
        sequence = sequences[index] if sequences is not None else None
        if folder is None and (sequence is None or sequence not in seen):
            raise FileNotFoundError(
                f"{name}: no alignment folder for chain {chain_id}; tried " + ", ".join(str(p) for p in tried)
            )
        found.append(folder)
        if sequence is not None:
            seen.add(sequence)
    return found


def _check_inputs(sequences: Sequence[str], chain_msa_dirs: Sequence[PathLike | None] | None) -> list[str]:
    sequences = [str(s).strip().upper() for s in sequences]
    if not sequences:
        raise ValueError("complex_features: no chain sequences")
    if len(sequences) > PDB_MAX_CHAINS:
        raise ValueError(f"complex_features: {len(sequences)} chains; at most {PDB_MAX_CHAINS} (one PDB chain ID each)")
    if chain_msa_dirs is not None and len(chain_msa_dirs) != len(sequences):
        raise ValueError(
            f"complex_features: {len(sequences)} sequences but {len(chain_msa_dirs)} alignment folders (one per chain)"
        )
    for index, sequence in enumerate(sequences):
        if not sequence:
            raise ValueError(f"complex_features: chain {index + 1} has an empty sequence")
        bad = sorted(set(sequence) - parsers.QUERY_ALPHABET)
        if bad:
            raise ValueError(f"complex_features: chain {index + 1}: illegal residue letter(s) {''.join(bad)!r}")
    return sequences


def complex_features(
    sequences: Sequence[str],
    chain_msa_dirs: Sequence[PathLike | None] | None = None,
    *,
    msa_mode: str = "precomputed",
    databases: Mapping[str, Any] | None = None,
    uniprot_database: PathLike | Sequence[PathLike] | None = None,
    output_dir: PathLike | None = None,
    cpus: int = 1,
    template_mmcif_dir: PathLike | None = None,
    max_template_date: str | datetime.date | None = None,
    require_uniprot: bool = True,
    info: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """The multimer model's batch for a complex from its chains' alignments.

    Args:
      sequences: one sequence per chain, in FASTA order (chain IDs ``A``, ``B``, ...);
        homomers by repetition.
      chain_msa_dirs: (precomputed) one alignment folder per chain (see the module
        docstring and :func:`find_chain_msa_dirs`). Only the first chain of each distinct
        sequence is read (as AlphaFold does); later copies may be None or any folder.
      msa_mode: ``precomputed`` (read ``chain_msa_dirs``) or ``search`` (jackhmmer via
        pyhmmer against ``databases``, and ``uniprot_database`` for pairing).
      databases: (search) ``{'uniref90': fasta, 'mgnify': fasta, ...}`` as in
        :func:`jaxfold.data.pipeline.build_raw_features`.
      uniprot_database: (search) UniProt FASTA file(s) for pairing (heteromers only).
      output_dir: (search) alignments go to ``output_dir/<chain_id>/``, so that a rerun with
        ``chain_msa_dirs=[output_dir/'A', ...]`` reads them back.
      cpus: threads per jackhmmer search.
      template_mmcif_dir: folder of ``<pdb_id>.cif`` for the template hits found in the
        chain folders; None: no templates (AlphaFold-Multimer's all-zero template).
      max_template_date: ``YYYY-MM-DD`` release cut-off for templates (default: today).
      require_uniprot: a heteromer chain without a UniProt alignment is an error (True)
        or left unpaired (False). Homomers and monomers never need one.
      info: optional dict receiving ``chains``: one dict per chain in batch order with
        ``chain_id`` (FASTA-order letter), ``input_index``, ``sequence``, ``entity_id``,
        ``sym_id``, ``asym_id`` (1-based), ``start`` / ``end`` (residue range in the
        batch); and ``per_sequence``: ``chain_id -> {msa_depth, num_alignments,
        uniprot_rows, templates, template_errors, ...}`` for each featurised sequence.

    Returns:
      DeepMind's multimer batch (see :mod:`jaxfold.data.multimer_merge`).

    Raises:
      ValueError / FileNotFoundError / jaxfold.data.parsers.ParseError /
      jaxfold.data.msa_search.MsaSearchError: bad sequences, alignment files or set-up,
      with the chain or the file named.
    """
    if msa_mode == "precomputed" and chain_msa_dirs is None:
        raise ValueError(
            'complex_features: msa_mode "precomputed" needs one alignment folder per chain (chain_msa_dirs)'
        )
    sequences = _check_inputs(sequences, chain_msa_dirs)
    dirs = list(chain_msa_dirs) if chain_msa_dirs is not None else [None] * len(sequences)
    info = {} if info is None else info
    ids = make_chain_ids(len(sequences))
    pair_msas = len(set(sequences)) > 1
    if msa_mode == "search" and pair_msas and uniprot_database is None and require_uniprot:
        # Said before any search runs.
        raise ValueError(
            "complex_features: a heteromer searched for MSAs needs a UniProt "
            "database to pair rows by species (uniprot_database=..., or "
            "require_uniprot=False to leave the chains unpaired)"
        )
    by_sequence: dict[str, FeatureDict] = {}
    all_chains: dict[str, FeatureDict] = {}
    info["per_sequence"] = {}
    for chain_id, sequence, msa_dir in zip(ids, sequences, dirs):
        if sequence not in by_sequence:
            if msa_mode == "precomputed" and msa_dir is None:
                raise ValueError(
                    f"complex_features: chain {chain_id} is the first copy of "
                    "its sequence and needs an alignment folder"
                )
            chain_info: dict[str, Any] = {}
            raw = chain_features(
                sequence,
                chain_id,
                msa_dir,
                pair_msas=pair_msas,
                msa_mode=msa_mode,
                databases=databases,
                uniprot_database=uniprot_database,
                output_dir=output_dir,
                cpus=cpus,
                template_mmcif_dir=template_mmcif_dir,
                max_template_date=max_template_date,
                require_uniprot=require_uniprot,
                info=chain_info,
            )
            by_sequence[sequence] = convert_monomer_features(raw, chain_id)
            info["per_sequence"][chain_id] = chain_info
        # Copies share the first chain's arrays; add_assembly_features makes new dicts.
        all_chains[chain_id] = by_sequence[sequence]
    assembly = add_assembly_features(all_chains)

    # Where each input chain went: add_assembly_features groups chains by entity.
    entity_order = list(by_sequence)
    order = sorted(range(len(sequences)), key=lambda i: (entity_order.index(sequences[i]), i))
    chains_info, start = [], 0
    for index, features in zip(order, assembly.values()):
        end = start + len(sequences[index])
        chains_info.append(
            {
                "chain_id": ids[index],
                "input_index": index,
                "sequence": sequences[index],
                "entity_id": int(features["entity_id"][0]),
                "sym_id": int(features["sym_id"][0]),
                "asym_id": int(features["asym_id"][0]),
                "start": start,
                "end": end,
            }
        )
        start = end
    info["chains"] = chains_info
    return pad_msa(pair_and_merge(assembly))
