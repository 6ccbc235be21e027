"""Template hits -> template features, following AlphaFold2 v2.3.2's ``HhsearchHitFeaturizer``.

For a query sequence and a list of template hits (HHsearch ``.hhr`` or hmmsearch ``.sto`` hits as
parsed by :mod:`jaxfold.data.parsers`; any object with the ``TemplateHit`` attributes ``index,
name, aligned_cols, sum_probs, query, hit_sequence, indices_query, indices_hit`` works),
:class:`TemplateFeaturizer` does what AlphaFold does:

1. Hits are visited in decreasing ``sum_probs`` (stable sort; input order when a hit has no
   ``sum_probs``, as for hmmsearch hits, whose ``template_sum_probs`` is then 0) until
   ``max_hits`` templates are made.
2. The hit name gives PDB id and chain (``1ABC_A``, ``1abc_A mol:protein length:76``,
   ``4zey_A/2-84``: 4 alphanumerics, ``_``, chain); the id is lower-cased and, when it is not in
   the release-date table, replaced by its successor from the obsolete table.
3. Prefilter (no mmCIF read): released after the cut-off (only when a release-date table is
   given); same PDB id as the query; aligned columns / query length <= 0.1; the ungapped hit
   sequence is a substring of the query *and* longer than 0.95 x the query (near-duplicate);
   fewer than 10 hit residues. These hits are skipped silently (``strict_error_check`` reports the
   date, PDB-id and duplicate cases as errors), as AlphaFold does.
4. The mmCIF ``<mmcif_dir>/<pdb_id>.cif`` is parsed; a release date after the cut-off drops the
   hit. The cut-off is ``max_template_date``, or ``query_release_date - 60 days`` when earlier.
5. The ungapped hit sequence is looked up in the mmCIF SEQRES: exact substring of the named
   chain, else of any chain, else a match with ``X`` as wildcard. If none, the hit sequence is
   realigned to the named chain's SEQRES (or the only chain's) and the query->hit mapping is
   carried through that alignment; the realignment must reach 90 % identity relative to the
   shorter sequence. AlphaFold runs ``kalign`` for this; here the ``kalign`` binary is used when
   given or on ``PATH``, otherwise :func:`global_align` (Biopython's affine-gap global aligner,
   BLOSUM62, gap open 11 / extend 1, free end gaps). Both give the same alignment for the nearly
   identical sequences this step is meant for.
6. Features: for each query residue mapped to a template residue, that residue's atom37
   coordinates/mask and its SEQRES letter; unmapped query residues get zeros and ``'-'``.
   ``template_aatype`` is the one-hot of that string in the *HHblits* alphabet (22 classes,
   ``'-'`` = 21); downstream code maps it to AlphaFold's residue order.

Errors never abort the search; they are returned as strings in ``errors`` (problems with a hit or
the set-up, e.g. a missing mmCIF file, which would crash AlphaFold) or ``warnings`` (missing
experimental data or unparseable mmCIF, and realignments), as AlphaFold sorts them. Skipped hits
are listed in ``skipped`` with the reason. Every hit that gave no template is also counted under a
short reason in ``skipped_by_reason`` (``{"mmCIF unreadable (corrupt or truncated)": ["1abc_A", ...]}``,
see :data:`SKIP_REASONS`), and one log line per search summarises them (warning level when a file was
missing or unreadable), instead of a line per hit.

AlphaFold quirk kept on purpose: after a realignment, a query residue whose hit residue has no
partner in the realigned chain gets template index -1, i.e. the *last* SEQRES residue's atoms and
letter (Python negative indexing), exactly as AlphaFold's ``_extract_template_features`` does.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from Bio import Align
from Bio.Align import substitution_matrices

from jaxfold.common import residue_constants
from jaxfold.data import mmcif

__all__ = [
    "TEMPLATE_FEATURES",
    "TemplateSearchResult",
    "SKIP_REASONS",
    "summarize_skipped",
    "TemplateFeaturizer",
    "TemplateError",
    "empty_template_features",
    "get_pdb_id_and_chain",
    "build_query_to_hit_index_mapping",
    "assess_hit",
    "find_template_in_mmcif",
    "realign_template_to_chain",
    "extract_template_features",
    "global_align",
    "kalign_align",
    "parse_release_dates",
    "parse_obsolete_pdbs",
]

logger = logging.getLogger(__name__)

TEMPLATE_FEATURES = {
    "template_aatype": np.float32,
    "template_all_atom_masks": np.float32,
    "template_all_atom_positions": np.float32,
    "template_domain_names": object,
    "template_sequence": object,
    "template_sum_probs": np.float32,
}

_DateLike = str | datetime.date | datetime.datetime

# 20 amino acids + X + gap.
_NUM_HHBLITS_CLASSES = max(residue_constants.HHBLITS_AA_TO_ID.values()) + 1


# --------------------------------------------------------------------------------------------
# Errors (AlphaFold's classes, one hierarchy).
# --------------------------------------------------------------------------------------------

# The short reasons of `TemplateSearchResult.skipped_by_reason`; the first four are problems with the
# template mirror or the hits (logged as a warning), the others AlphaFold's filters (logged as info).
SKIP_REASONS = (
    "mmCIF file not found",
    "mmCIF unreadable (corrupt or truncated)",
    "mmCIF without release date",
    "bad hit name",
    "no usable atoms in the aligned residues",
    "sequence not found in the mmCIF (realignment failed)",
    "released after the template cut-off",
    "prefilter (query's own entry, near-duplicate, short or poorly aligned hit)",
)
_PROBLEM_REASONS = frozenset(SKIP_REASONS[:4])


def summarize_skipped(skipped_by_reason: Mapping[str, Sequence[str]], limit: int = 5) -> str:
    """``{reason: [hit, ...]}`` -> one line: ``"7 template hits not used: mmCIF file not found: 5
    (1abc_A, ...); ..."`` (empty string when nothing was skipped)."""
    total = sum(len(v) for v in skipped_by_reason.values())
    if not total:
        return ""
    parts = []
    for reason, hits in skipped_by_reason.items():
        shown = ", ".join(hits[:limit]) + (", ..." if len(hits) > limit else "")
        parts.append(f"{reason}: {len(hits)} ({shown})")
    return f"{total} template hit(s) not used: " + "; ".join(parts)


class TemplateError(Exception):
    """Feature extraction failed for one hit."""


class NoChainsError(TemplateError):
    """The mmCIF has no usable protein chain (or could not be parsed)."""


class SequenceNotInTemplateError(TemplateError):
    """The hit sequence is not in the mmCIF SEQRES."""


class NoAtomDataInTemplateError(TemplateError):
    """Atom data of the template chain could not be read."""


class TemplateAtomMaskAllZerosError(TemplateError):
    """The aligned template residues have (almost) no atoms."""


class QueryToTemplateAlignError(TemplateError):
    """The hit could not be realigned to the mmCIF chain."""


class PrefilterError(Exception):
    """A hit rejected before reading its mmCIF."""


class DateError(PrefilterError):
    pass


class PdbIdError(PrefilterError):
    pass


class AlignRatioError(PrefilterError):
    pass


class DuplicateError(PrefilterError):
    pass


class LengthError(PrefilterError):
    pass


# --------------------------------------------------------------------------------------------
# Small helpers.
# --------------------------------------------------------------------------------------------


def _to_datetime(value: _DateLike, what: str) -> datetime.datetime:
    if isinstance(value, datetime.datetime):
        return value
    if isinstance(value, datetime.date):
        return datetime.datetime(value.year, value.month, value.day)
    try:
        return datetime.datetime.strptime(str(value).strip(), "%Y-%m-%d")
    except ValueError as e:
        raise ValueError(f"{what} must be a date in format YYYY-MM-DD, got {value!r}.") from e


_PDB_ID_CHAIN_RE = re.compile(r"[a-zA-Z\d]{4}_[a-zA-Z0-9.]+")


def get_pdb_id_and_chain(hit_name: str) -> tuple[str, str]:
    """``'1ABC_A ...'`` -> ``('1abc', 'A')``: lower-case PDB id, chain id as written."""
    match = _PDB_ID_CHAIN_RE.match(hit_name)
    if not match:
        raise ValueError(f"Hit name does not start with PDBID_chain: {hit_name!r}")
    pdb_id, chain_id = match.group(0).split("_")
    return pdb_id.lower(), chain_id


def parse_release_dates(path: str) -> dict[str, datetime.datetime]:
    """Reads ``pdb_id: YYYY-MM-DD`` lines (AlphaFold's ``.txt`` release-date table)."""
    dates = {}
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                pdb_id, date = line.split(":")
                date = date.strip()
                dates[pdb_id.strip()] = datetime.datetime(year=int(date[:4]), month=int(date[5:7]), day=int(date[8:10]))
            except ValueError as e:
                raise ValueError(f'{path}:{line_no}: expected "pdb_id: YYYY-MM-DD", got {line.rstrip()!r}') from e
    return dates


def parse_obsolete_pdbs(path: str) -> dict[str, str]:
    """Reads the PDB ``obsolete.dat`` (``OBSLTE  31-JUL-94 116L     216L``): old id -> new id.

    Entries without a replacement are left out.
    """
    result = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("OBSLTE") and len(line) > 30:
                result[line[20:24].lower()] = line[29:33].lower()
    return result


def empty_template_features(num_res: int) -> dict[str, np.ndarray]:
    """Template features with zero templates (``T = 0``) and the right trailing shapes."""
    return {
        "template_aatype": np.zeros((0, num_res, _NUM_HHBLITS_CLASSES), np.float32),
        "template_all_atom_masks": np.zeros((0, num_res, residue_constants.atom_type_num), np.float32),
        "template_all_atom_positions": np.zeros((0, num_res, residue_constants.atom_type_num, 3), np.float32),
        "template_domain_names": np.zeros((0,), dtype=object),
        "template_sequence": np.zeros((0,), dtype=object),
        "template_sum_probs": np.zeros((0, 1), np.float32),
    }


# --------------------------------------------------------------------------------------------
# Pairwise alignment for template realignment.
# --------------------------------------------------------------------------------------------

# The letters BLOSUM62 scores (as our Gotoh implementation did: anything else counts as X).
_BLOSUM62_LETTERS = frozenset("ARNDCQEGHILKMFPSTWYVBZX")


def global_align(seq_a: str, seq_b: str, gap_open: float = 11.0, gap_extend: float = 1.0) -> tuple[str, str]:
    """Global alignment (affine gaps, BLOSUM62) with free end gaps, by Biopython's `PairwiseAligner`.

    An internal gap of length L costs ``gap_open + (L - 1) * gap_extend``; leading and trailing gaps in
    either sequence are free, so a fragment aligns inside a longer chain without penalty. (It replaced our
    own Gotoh implementation, which gave identical alignments and template features on the test data.)

    Returns:
      the two aligned strings (same length, ``'-'`` for gaps).
    """
    if gap_open < gap_extend:
        raise ValueError("gap_open must be >= gap_extend.")
    if not seq_a or not seq_b:
        return seq_a + "-" * len(seq_b), "-" * len(seq_a) + seq_b
    aligner = Align.PairwiseAligner(mode="global")
    aligner.substitution_matrix = substitution_matrices.load("BLOSUM62")
    aligner.open_gap_score = -gap_open
    aligner.extend_gap_score = -gap_extend
    aligner.end_gap_score = 0.0
    alignment = aligner.align(_blosum_alphabet(seq_a), _blosum_alphabet(seq_b))[0]
    aligned_a, aligned_b = alignment[0], alignment[1]
    return _restore(aligned_a, seq_a), _restore(aligned_b, seq_b)


def _blosum_alphabet(seq: str) -> str:
    """Letters outside BLOSUM62 count as ``X``."""
    return "".join(c if c in _BLOSUM62_LETTERS else "X" for c in seq.upper())


def _restore(aligned: str, original: str) -> str:
    """The aligned string with the original letters back in place of the ``X`` stand-ins."""
    letters = iter(original)
    return "".join(c if c == "-" else next(letters) for c in aligned)


def kalign_align(seq_a: str, seq_b: str, binary_path: str) -> tuple[str, str]:
    """Aligns two sequences with the ``kalign`` binary, as AlphaFold's wrapper calls it."""
    for s in (seq_a, seq_b):
        if len(s) < 6:
            raise ValueError(
                f"Kalign requires all sequences to be at least 6 residues long. Got {s} ({len(s)} residues)."
            )
    with tempfile.TemporaryDirectory(prefix="jaxfold_kalign_") as tmp:
        in_path = os.path.join(tmp, "input.fasta")
        out_path = os.path.join(tmp, "output.a3m")
        with open(in_path, "w") as f:
            f.write(f">sequence 1\n{seq_a}\n>sequence 2\n{seq_b}\n")
        cmd = [binary_path, "-i", in_path, "-o", out_path, "-format", "fasta"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode:
            raise RuntimeError(
                f"Kalign failed (exit {proc.returncode}):\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        with open(out_path) as f:
            text = f.read()
    seqs: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith(">"):
            seqs.append("")
        elif seqs:
            # A3M semantics (as AlphaFold parses kalign's output): drop insertions.
            seqs[-1] += "".join(c for c in line if not c.islower() and c != ".")
    if len(seqs) != 2 or len(seqs[0]) != len(seqs[1]):
        raise RuntimeError(f"Unexpected kalign output:\n{text}")
    return seqs[0], seqs[1]


# --------------------------------------------------------------------------------------------
# The per-hit steps.
# --------------------------------------------------------------------------------------------


def build_query_to_hit_index_mapping(
    hit_query_sequence: str,
    hit_sequence: str,
    indices_hit: Sequence[int],
    indices_query: Sequence[int],
    original_query_sequence: str,
) -> dict[int, int]:
    """Query index -> index in the *ungapped* hit sequence, from a hit's aligned columns.

    As AlphaFold: both index lists are re-based to their smallest non-gap value, the query
    part is located in the full query by substring search, and columns with a gap (-1) on
    either side or beyond either sequence are dropped.
    """
    if not hit_query_sequence:
        return {}
    query_part = hit_query_sequence.replace("-", "")
    hit_ungapped = hit_sequence.replace("-", "")
    query_offset = original_query_sequence.find(query_part)

    hit_idx = [x for x in indices_hit if x > -1]
    query_idx = [x for x in indices_query if x > -1]
    if not hit_idx or not query_idx:
        return {}
    min_hit, min_query = min(hit_idx), min(query_idx)
    mapping = {}
    for q, t in zip(indices_query, indices_hit):
        if q == -1 or t == -1:
            continue
        q, t = q - min_query, t - min_hit
        if t >= len(hit_ungapped) or q + query_offset >= len(original_query_sequence):
            continue
        mapping[q + query_offset] = t
    return mapping


def assess_hit(
    hit: Any,
    hit_pdb_code: str,
    query_sequence: str,
    query_pdb_code: str | None,
    release_dates: Mapping[str, datetime.datetime],
    release_date_cutoff: datetime.datetime,
    max_subsequence_ratio: float = 0.95,
    min_align_ratio: float = 0.1,
) -> bool:
    """AlphaFold's prefilter; returns True or raises a :class:`PrefilterError`."""
    align_ratio = hit.aligned_cols / len(query_sequence)
    template_sequence = hit.hit_sequence.replace("-", "")
    length_ratio = float(len(template_sequence)) / len(query_sequence)
    duplicate = template_sequence in query_sequence and length_ratio > max_subsequence_ratio

    if hit_pdb_code in release_dates and release_dates[hit_pdb_code] > release_date_cutoff:
        raise DateError(f"Date ({release_dates[hit_pdb_code]}) > max template date ({release_date_cutoff}).")
    if query_pdb_code is not None and query_pdb_code.lower() == hit_pdb_code.lower():
        raise PdbIdError("PDB code identical to Query PDB code.")
    if align_ratio <= min_align_ratio:
        raise AlignRatioError(f"Proportion of residues aligned to query too small. Align ratio: {align_ratio}.")
    if duplicate:
        raise DuplicateError(
            f"Template is an exact subsequence of query with large coverage. Length ratio: {length_ratio}."
        )
    if len(template_sequence) < 10:
        raise LengthError(f"Template too short. Length: {len(template_sequence)}.")
    return True


def find_template_in_mmcif(
    template_chain_id: str, template_sequence: str, mmcif_object: mmcif.MmcifObject
) -> tuple[str, str, int]:
    """Finds the hit sequence in the mmCIF SEQRES: (chain sequence, chain id, offset).

    Tries, in order: exact substring of the named chain; exact substring of any chain (in
    entity order); a match where ``X`` on either side is a wildcard. Raises
    :class:`SequenceNotInTemplateError` otherwise.
    """
    chain_sequence = mmcif_object.chain_to_seqres.get(template_chain_id)
    if chain_sequence and template_sequence in chain_sequence:
        return chain_sequence, template_chain_id, chain_sequence.find(template_sequence)
    for chain_id, chain_sequence in mmcif_object.chain_to_seqres.items():
        if chain_sequence and template_sequence in chain_sequence:
            return chain_sequence, chain_id, chain_sequence.find(template_sequence)
    pattern = re.compile("".join("." if aa == "X" else f"(?:{re.escape(aa)}|X)" for aa in template_sequence))
    for chain_id, chain_sequence in mmcif_object.chain_to_seqres.items():
        match = pattern.search(chain_sequence)
        if match:
            return chain_sequence, chain_id, match.start()
    raise SequenceNotInTemplateError(
        f"Could not find the template sequence in {mmcif_object.file_id}_{template_chain_id}. "
        f"Template sequence: {template_sequence}, chain_to_seqres: "
        f"{dict(mmcif_object.chain_to_seqres)}"
    )


def realign_template_to_chain(
    old_template_sequence: str,
    template_chain_id: str,
    mmcif_object: mmcif.MmcifObject,
    old_mapping: Mapping[int, int],
    kalign_binary: str | None = None,
) -> tuple[str, dict[int, int]]:
    """Realigns a hit sequence to the actual SEQRES of its chain and remaps the query.

    Returns ``(chain SEQRES, query index -> SEQRES index)``; query residues whose hit residue
    has no partner in the chain map to -1 (AlphaFold's behaviour). Raises
    :class:`QueryToTemplateAlignError` when the chain is not found, the alignment fails, or
    identity (identical aligned pairs / length of the shorter sequence) is below 90 %.
    """
    new_sequence = mmcif_object.chain_to_seqres.get(template_chain_id, "")
    if not new_sequence:
        if len(mmcif_object.chain_to_seqres) == 1:
            new_sequence = next(iter(mmcif_object.chain_to_seqres.values()))
        else:
            raise QueryToTemplateAlignError(
                f"Could not find chain {template_chain_id} in {mmcif_object.file_id}. If there "
                "are no mmCIF parsing errors, it is possible it was not a protein chain."
            )
    try:
        if kalign_binary:
            old_aligned, new_aligned = kalign_align(old_template_sequence, new_sequence, kalign_binary)
        else:
            old_aligned, new_aligned = global_align(old_template_sequence, new_sequence)
    except Exception as e:  # pylint: disable=broad-except
        raise QueryToTemplateAlignError(
            f"Could not align old template {old_template_sequence} to template {new_sequence} "
            f"({mmcif_object.file_id}_{template_chain_id}). Error: {e}"
        ) from e

    old_to_new: dict[int, int] = {}
    old_index = new_index = -1
    num_same = 0
    for old_aa, new_aa in zip(old_aligned, new_aligned):
        if old_aa != "-":
            old_index += 1
        if new_aa != "-":
            new_index += 1
        if old_aa != "-" and new_aa != "-":
            old_to_new[old_index] = new_index
            if old_aa == new_aa:
                num_same += 1
    if float(num_same) / min(len(old_template_sequence), len(new_sequence)) < 0.9:
        raise QueryToTemplateAlignError(
            f"Insufficient similarity of the sequence in the database: {old_template_sequence} "
            f"to the actual sequence in the mmCIF file {mmcif_object.file_id}_"
            f"{template_chain_id}: {new_sequence}. We require at least 90 % similarity wrt to "
            "the shorter of the sequences."
        )
    new_mapping = {q: old_to_new.get(t, -1) for q, t in old_mapping.items()}
    return new_sequence.replace("-", ""), new_mapping


def extract_template_features(
    mmcif_object: mmcif.MmcifObject | None,
    pdb_id: str,
    mapping: Mapping[int, int],
    template_sequence: str,
    query_sequence: str,
    template_chain_id: str,
    kalign_binary: str | None = None,
) -> tuple[dict[str, Any], str | None]:
    """Features of one template aligned to the query, and a realignment warning (or None)."""
    if mmcif_object is None or not mmcif_object.chain_to_seqres:
        raise NoChainsError(f"No chains in PDB: {pdb_id}_{template_chain_id}")

    warning = None
    try:
        seqres, chain_id, mapping_offset = find_template_in_mmcif(template_chain_id, template_sequence, mmcif_object)
    except SequenceNotInTemplateError:
        chain_id = template_chain_id
        warning = (
            f"The exact sequence {template_sequence} was not found in "
            f"{pdb_id}_{chain_id}. Realigning the template to the actual sequence."
        )
        logger.warning(warning)
        seqres, mapping = realign_template_to_chain(
            template_sequence, template_chain_id, mmcif_object, mapping, kalign_binary
        )
        template_sequence = seqres
        mapping_offset = 0

    try:
        positions, masks = mmcif_object.get_atom_positions(chain_id)
        # AlphaFold rejects a chain whose consecutive observed CA atoms are > 150 A apart.
        _check_ca_distances(positions, masks, max_ca_ca_distance=150.0)
    except (KeyError, ValueError) as e:
        raise NoAtomDataInTemplateError(f"Could not get atom data ({pdb_id}_{chain_id}): {e}") from e

    num_res = len(query_sequence)
    out_positions = np.zeros((num_res, residue_constants.atom_type_num, 3), np.float32)
    out_masks = np.zeros((num_res, residue_constants.atom_type_num), np.float32)
    out_sequence = ["-"] * num_res
    for query_index, template_index in mapping.items():
        # template_index may be -1 after a realignment: Python indexing then takes the last
        # residue, as AlphaFold does.
        index = template_index + mapping_offset
        out_positions[query_index] = positions[index]
        out_masks[query_index] = masks[index]
        out_sequence[query_index] = template_sequence[template_index]

    if np.sum(out_masks) < 5:  # Alanine, the smallest residue, has 5 heavy atoms.
        values = list(mapping.values())
        span = f"{min(values) + mapping_offset}-{max(values) + mapping_offset}" if values else "empty"
        raise TemplateAtomMaskAllZerosError(
            f"Template all atom mask was all zeros: {pdb_id}_{chain_id}. Residue range: {span}"
        )

    sequence = "".join(out_sequence)
    aatype = residue_constants.sequence_to_onehot(sequence, residue_constants.HHBLITS_AA_TO_ID)
    return {
        "template_all_atom_positions": out_positions,
        "template_all_atom_masks": out_masks,
        "template_sequence": sequence.encode(),
        "template_aatype": aatype.astype(np.float32),
        "template_domain_names": f"{pdb_id.lower()}_{chain_id}".encode(),
    }, warning


def _check_ca_distances(positions: np.ndarray, masks: np.ndarray, max_ca_ca_distance: float) -> None:
    ca = residue_constants.atom_order["CA"]
    prev = None
    prev_present = False
    for i in range(positions.shape[0]):
        present = bool(masks[i, ca])
        if present:
            if prev_present:
                distance = float(np.linalg.norm(positions[i, ca] - prev))
                if distance > max_ca_ca_distance:
                    raise ValueError(
                        f"The distance between residues {i} and {i + 1} is {distance:f} > limit {max_ca_ca_distance:f}."
                    )
            prev = positions[i, ca]
        prev_present = present


# --------------------------------------------------------------------------------------------
# The featurizer.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TemplateSearchResult:
    """Stacked features (``T`` templates), and messages about hits that gave none.

    ``errors`` and ``warnings`` are AlphaFold's lists; ``skipped`` (ours) names the hits dropped
    by the prefilter or the release-date check, with the reason. ``skipped_by_reason`` (ours):
    every hit that gave no template (``pdbid_chain``), grouped under one of :data:`SKIP_REASONS`
    (JSON-able; :func:`summarize_skipped` renders it as one line).
    """

    features: Mapping[str, np.ndarray]
    errors: Sequence[str]
    warnings: Sequence[str]
    skipped: Sequence[str] = ()
    skipped_by_reason: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class _HitResult:
    features: dict[str, Any] | None
    error: str | None = None
    warning: str | None = None
    skipped: str | None = None
    reason: str | None = None  # one of SKIP_REASONS when no features
    label: str = "?"


class TemplateFeaturizer:
    """Turns template hits into AlphaFold template features (``HhsearchHitFeaturizer``).

    Args:
      mmcif_dir: folder of ``<pdb_id>.cif`` files (lower-case ids).
      max_template_date: ``YYYY-MM-DD`` (or a date); templates released later are dropped.
      max_hits: at most this many templates are returned.
      release_dates_path: optional ``pdb_id: YYYY-MM-DD`` table used to drop late hits before
        parsing their mmCIF.
      obsolete_pdbs_path: optional PDB ``obsolete.dat``; obsolete ids (not in the release
        table) are replaced by their successors.
      kalign_binary: kalign executable for realignments; ``None`` looks for ``kalign`` on
        ``PATH`` and falls back to :func:`global_align`; ``''`` forces :func:`global_align`.
      strict_error_check: AlphaFold's option: report date / PDB-id / duplicate prefilter
        rejections, post-parse date rejections and missing-data problems as errors.
    """

    def __init__(
        self,
        mmcif_dir: str | os.PathLike,
        max_template_date: _DateLike,
        max_hits: int = 20,
        release_dates_path: str | None = None,
        obsolete_pdbs_path: str | None = None,
        kalign_binary: str | None = None,
        strict_error_check: bool = False,
    ):
        self._mmcif_dir = os.fspath(mmcif_dir)
        if not os.path.isdir(self._mmcif_dir) or not any(name.endswith(".cif") for name in os.listdir(self._mmcif_dir)):
            raise ValueError(f"Could not find CIFs in {self._mmcif_dir}")
        self._max_template_date = _to_datetime(max_template_date, "max_template_date")
        if max_hits < 0:
            raise ValueError(f"max_hits must be >= 0, got {max_hits}.")
        self._max_hits = max_hits
        if kalign_binary is None:
            kalign_binary = shutil.which("kalign")
        self._kalign_binary = kalign_binary or None
        self._strict_error_check = strict_error_check
        self._release_dates = parse_release_dates(release_dates_path) if release_dates_path else {}
        self._obsolete_pdbs = parse_obsolete_pdbs(obsolete_pdbs_path) if obsolete_pdbs_path else {}

    @property
    def kalign_binary(self) -> str | None:
        """The kalign executable used for realignment, or None for :func:`global_align`."""
        return self._kalign_binary

    def get_templates(
        self,
        query_sequence: str,
        hits: Sequence[Any],
        *,
        query_pdb_code: str | None = None,
        query_release_date: _DateLike | None = None,
    ) -> TemplateSearchResult:
        """Template features for ``query_sequence`` from ``hits``.

        ``query_pdb_code`` drops hits from the query's own entry; ``query_release_date``
        moves the cut-off to 60 days before it when that is earlier than max_template_date.
        """
        if not query_sequence:
            raise ValueError("query_sequence is empty.")
        cutoff = self._max_template_date
        if query_release_date is not None:
            query_date = _to_datetime(query_release_date, "query_release_date")
            cutoff = min(cutoff, query_date - datetime.timedelta(days=60))

        collected: dict[str, list[Any]] = {name: [] for name in TEMPLATE_FEATURES}
        errors: list[str] = []
        warnings_: list[str] = []
        skipped: list[str] = []
        by_reason: dict[str, list[str]] = {}
        num_hits = 0
        if hits and all(h.sum_probs is not None for h in hits):
            ordered = sorted(hits, key=lambda h: h.sum_probs, reverse=True)  # stable
        else:  # hmmsearch hits carry no sum_probs: keep their order (AlphaFold does too).
            ordered = list(hits)
        for hit in ordered:
            if num_hits >= self._max_hits:
                break
            result = self._process_hit(query_sequence, query_pdb_code, hit, cutoff)
            if result.error:
                errors.append(result.error)
            if result.warning:
                warnings_.append(result.warning)
            if result.skipped:
                skipped.append(result.skipped)
            if result.features is None and result.reason:
                by_reason.setdefault(result.reason, []).append(result.label)
            if result.features is not None:
                num_hits += 1
                for name in collected:
                    collected[name].append(result.features[name])

        if num_hits == 0:
            features = empty_template_features(len(query_sequence))
        else:
            features = {}
            for name, dtype in TEMPLATE_FEATURES.items():
                if dtype is object:
                    arr = np.empty((num_hits,), dtype=object)
                    arr[:] = collected[name]
                    features[name] = arr
                else:
                    features[name] = np.stack(collected[name], axis=0).astype(dtype)
        summary = summarize_skipped(by_reason)
        if summary:
            level = logging.WARNING if _PROBLEM_REASONS & set(by_reason) else logging.INFO
            logger.log(level, "%s", summary)
        return TemplateSearchResult(
            features=features, errors=errors, warnings=warnings_, skipped=skipped, skipped_by_reason=by_reason
        )

    def _process_hit(
        self, query_sequence: str, query_pdb_code: str | None, hit: Any, cutoff: datetime.datetime
    ) -> _HitResult:
        strict = self._strict_error_check
        try:
            pdb_code, chain_id = get_pdb_id_and_chain(hit.name)
        except ValueError as e:  # AlphaFold raises here; we report and go on.
            return _HitResult(
                None,
                error=f"hit {getattr(hit, 'index', '?')}: {e}",
                reason="bad hit name",
                label=str(getattr(hit, "name", "?")).split()[0],
            )
        if pdb_code not in self._release_dates and pdb_code in self._obsolete_pdbs:
            pdb_code = self._obsolete_pdbs[pdb_code]
        label = f"{pdb_code}_{chain_id}"
        fail = lambda reason, **kw: _HitResult(None, reason=reason, label=label, **kw)  # noqa: E731
        sum_probs = 0.0 if hit.sum_probs is None else float(hit.sum_probs)
        context = f"{label} (sum_probs: {sum_probs:.2f}, rank: {hit.index})"

        try:
            assess_hit(hit, pdb_code, query_sequence, query_pdb_code, self._release_dates, cutoff)
        except PrefilterError as e:
            msg = f"hit {label} did not pass prefilter: {e}"
            logger.info(msg)
            reason = SKIP_REASONS[6] if isinstance(e, DateError) else SKIP_REASONS[7]
            if strict and isinstance(e, (DateError, PdbIdError, DuplicateError)):
                return fail(reason, error=msg, skipped=msg)
            return fail(reason, skipped=msg)

        mapping = build_query_to_hit_index_mapping(
            hit.query, hit.hit_sequence, hit.indices_hit, hit.indices_query, query_sequence
        )
        template_sequence = hit.hit_sequence.replace("-", "")

        cif_path = os.path.join(self._mmcif_dir, pdb_code + ".cif")
        if not os.path.exists(cif_path):
            # AlphaFold crashes here (open() fails); we report the hit and go on.
            return fail(SKIP_REASONS[0], error=f"{context}: mmCIF file not found: {cif_path}")
        parse_error = None
        try:
            mmcif_object = mmcif.parse_mmcif_file(cif_path, file_id=pdb_code)
        except mmcif.MmcifParseError as e:
            mmcif_object, parse_error = None, str(e)

        if mmcif_object is not None:
            if mmcif_object.release_date is None:
                return fail(
                    SKIP_REASONS[2],
                    error=f"{context}: mmCIF {cif_path} has no release date "
                    "(_pdbx_audit_revision_history); cannot apply the date cut-off.",
                )
            hit_date = datetime.datetime.strptime(mmcif_object.release_date, "%Y-%m-%d")
            if hit_date > cutoff:
                msg = f"Template {pdb_code} date ({hit_date}) > max template date ({cutoff})."
                logger.info(msg)
                return fail(SKIP_REASONS[6], error=msg if strict else None, skipped=msg)

        try:
            features, realign_warning = extract_template_features(
                mmcif_object=mmcif_object,
                pdb_id=pdb_code,
                mapping=mapping,
                template_sequence=template_sequence,
                query_sequence=query_sequence,
                template_chain_id=chain_id,
                kalign_binary=self._kalign_binary,
            )
            features["template_sum_probs"] = np.array([sum_probs], np.float32)
            return _HitResult(features, warning=realign_warning)
        except (NoChainsError, NoAtomDataInTemplateError, TemplateAtomMaskAllZerosError) as e:
            msg = f"{context}: feature extracting errors: {e}, mmCIF parsing errors: {parse_error}"
            reason = SKIP_REASONS[1] if parse_error else SKIP_REASONS[4]
            if strict:
                return fail(reason, error=msg)
            return fail(reason, warning=msg)
        except TemplateError as e:
            return fail(
                SKIP_REASONS[1] if parse_error else SKIP_REASONS[5],
                error=(f"{context}: feature extracting errors: {e}, mmCIF parsing errors: {parse_error}"),
            )
