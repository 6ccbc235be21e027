"""Parsers for the sequence, alignment and template-hit formats of the AlphaFold2 pipeline.

Semantics follow DeepMind AlphaFold v2.3.2 (``alphafold/data/parsers.py``) wherever AlphaFold
defines them, so that features built from these parsers equal AlphaFold's. Where AlphaFold
would crash or silently produce a ragged / misaligned MSA, this module raises
:class:`ParseError` instead, naming the source, the record and the 1-based line number.

Formats:

* FASTA (query sequences): :func:`parse_fasta`, :func:`read_fasta`. Strict: every record
  needs a header and a non-empty sequence made of the 20 standard letters, ``X`` and the
  ambiguity / rare codes ``B Z U O`` (AlphaFold maps all of these to ``X`` in ``aatype``).
  Lower case is upper-cased, one terminal ``*`` (stop) is stripped.
* A3M (HHblits, ColabFold, RoseTTAFold): :func:`parse_a3m`. Lower-case letters are
  insertions relative to the query: counted into the deletion matrix, then removed.
* Stockholm (jackhmmer ``-A``, hmmsearch): :func:`parse_stockholm`. Columns in which the
  query (first row) has a gap are dropped; residues of other rows in those columns are
  counted as deletions before the next kept column.
* HHR (HHsearch / HHblits hit lists): :func:`parse_hhr`.
* hmmsearch Stockholm template hits (``hmm_output.sto`` / ``pdb_hits.sto``):
  :func:`parse_hmmsearch_sto`.

Stockholm helpers used by AlphaFold's pipeline: :func:`truncate_stockholm_msa` (depth limit
while reading), :func:`deduplicate_stockholm_msa`,
:func:`remove_empty_columns_from_stockholm_msa` and :func:`convert_stockholm_to_a3m`.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from jaxfold.common.files import PathLike

DeletionMatrix = Sequence[Sequence[int]]

# Letters accepted in a FASTA query: the 20 standard amino acids, X (unknown) and the
# ambiguity / rare codes that AlphaFold's sequence featurisation maps to X.
STANDARD_RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
QUERY_ALPHABET = frozenset(STANDARD_RESIDUES + "X" + "BZUO")

# Gap characters of alignment formats: '-' everywhere, '.' for gaps in insert columns
# (Stockholm from HMMER, optional in A3M).
_GAPS = frozenset("-.")


class ParseError(ValueError):
    """A malformed input file; the message names the source, record and line.

    Attributes:
      source: file name (or ``'<string>'``) of the parsed text.
      line: 1-based line number of the offending line, or None.
      record: name of the offending record (sequence / hit), or None.
      reason: the message without the location prefix.
    """

    def __init__(self, reason: str, *, source: str = "<string>", line: int | None = None, record: str | None = None):
        self.source = source
        self.line = line
        self.record = record
        self.reason = reason
        location = str(source)
        if line is not None:
            location += f", line {line}"
        if record is not None:
            location += f", record {record!r}"
        super().__init__(f"{location}: {reason}")


# ---------------------------------------------------------------------------------------
# Data classes.
# ---------------------------------------------------------------------------------------


def sanitize_name(name: str, max_length: int = 128) -> str:
    """A file-system-safe version of a sequence name (for ``msas/<name>/`` directories).

    Keeps ``A-Z a-z 0-9 . _ -``, replaces every other character (``|``, ``/``, spaces,
    ...) by ``_``, strips leading dots (no hidden files, no ``..``) and truncates to
    ``max_length`` characters. Never returns an empty string.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name.strip()).lstrip(".")
    safe = safe[:max_length]
    return safe or "unnamed"


@dataclasses.dataclass(frozen=True)
class FastaRecord:
    """One FASTA entry.

    Attributes:
      name: first whitespace-separated token of the header.
      description: the whole header line without ``>`` (AlphaFold's "description", which
        becomes the ``domain_name`` feature).
      sequence: upper-case residue letters, terminal ``*`` removed.
    """

    name: str
    description: str
    sequence: str

    @property
    def safe_name(self) -> str:
        """``sanitize_name(self.name)``: the name to use for files and directories."""
        return sanitize_name(self.name)

    def __len__(self) -> int:
        return len(self.sequence)


@dataclasses.dataclass(frozen=True)
class Msa:
    """A parsed MSA (AlphaFold's ``parsers.Msa``).

    Attributes:
      sequences: aligned rows, insertions removed; all of the query's length. Row 0 is the
        query. May contain duplicates.
      deletion_matrix: ``deletion_matrix[i][j]`` = number of residues of row i inserted
        (relative to the query) just before aligned column j.
      descriptions: one per row (A3M: the header line; Stockholm: the sequence name,
        followed by its ``#=GS ... DE`` text when present).
    """

    sequences: Sequence[str]
    deletion_matrix: DeletionMatrix
    descriptions: Sequence[str]

    def __post_init__(self):
        if not (len(self.sequences) == len(self.deletion_matrix) == len(self.descriptions)):
            raise ValueError(
                "All fields for an MSA must have the same length. "
                f"Got {len(self.sequences)} sequences, "
                f"{len(self.deletion_matrix)} rows in the deletion matrix and "
                f"{len(self.descriptions)} descriptions."
            )

    def __len__(self) -> int:
        return len(self.sequences)

    def truncate(self, max_seqs: int) -> Msa:
        """The first ``max_seqs`` rows (the query included)."""
        return Msa(
            sequences=self.sequences[:max_seqs],
            deletion_matrix=self.deletion_matrix[:max_seqs],
            descriptions=self.descriptions[:max_seqs],
        )


@dataclasses.dataclass(frozen=True)
class TemplateHit:
    """A template hit (AlphaFold's ``parsers.TemplateHit``).

    ``indices_query`` / ``indices_hit`` hold, per alignment column, the 0-based residue
    position in the query / hit sequence, or -1 where that side has a gap.
    ``sum_probs`` is None for hmmsearch hits (HMMER reports no such value).
    """

    index: int
    name: str
    aligned_cols: int
    sum_probs: float | None
    query: str
    hit_sequence: str
    indices_query: list[int]
    indices_hit: list[int]


# ---------------------------------------------------------------------------------------
# FASTA.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class _RawEntry:
    header: str  # header text without '>' (stripped)
    header_line: int  # 1-based
    chunks: list[tuple[int, str]]  # (1-based line number, stripped sequence text)


def _iter_raw_entries(text: str, source: str, *, allow_comments: bool) -> Iterator[_RawEntry]:
    """Splits FASTA-like text into entries; raises on sequence text before any header.

    ``allow_comments``: ``#`` lines before the first header are skipped (ColabFold writes
    a ``#<lengths>\\t<cardinalities>`` line at the top of its A3M files).
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    entry: _RawEntry | None = None
    for line_no, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.replace("\x00", "").strip()
        if line.startswith(">"):
            if entry is not None:
                yield entry
            entry = _RawEntry(header=line[1:].strip(), header_line=line_no, chunks=[])
        elif not line:
            continue
        elif entry is None:
            if allow_comments and line.startswith("#"):
                continue
            raise ParseError(
                "sequence data before the first header line (a FASTA record must start with '>name')",
                source=source,
                line=line_no,
            )
        else:
            entry.chunks.append((line_no, line))
    if entry is not None:
        yield entry


def parse_fasta(text: str, source: str = "<string>") -> list[FastaRecord]:
    """Parses FASTA text into records (strict; for query sequences).

    Raises:
      ParseError: no record at all, sequence text before the first header, an empty
        header, a record without sequence, or a character that is not an amino-acid
        letter accepted by AlphaFold (20 standard + X + B/Z/U/O; lower case is fine). The
        message names the source, the record and the line.
    """
    records = []
    for entry in _iter_raw_entries(text, source, allow_comments=False):
        if not entry.header:
            raise ParseError(
                "empty header: '>' must be followed by a sequence name", source=source, line=entry.header_line
            )
        name = entry.header.split()[0]
        pieces = []
        last_chunk = len(entry.chunks) - 1
        for chunk_index, (line_no, chunk) in enumerate(entry.chunks):
            chunk = "".join(chunk.split()).upper()
            if chunk_index == last_chunk and chunk.endswith("*"):
                chunk = chunk[:-1]  # Terminal stop codon.
            for column, letter in enumerate(chunk, start=1):
                if letter not in QUERY_ALPHABET:
                    raise ParseError(
                        f"illegal residue letter {letter!r} (column {column}); allowed are "
                        f"the 20 standard amino acids, X and B/Z/U/O",
                        source=source,
                        line=line_no,
                        record=name,
                    )
            pieces.append(chunk)
        sequence = "".join(pieces)
        if not sequence:
            raise ParseError("record has no sequence", source=source, line=entry.header_line, record=name)
        records.append(FastaRecord(name=name, description=entry.header, sequence=sequence))
    if not records:
        raise ParseError("no FASTA record found", source=source)
    return records


def read_fasta(path: PathLike) -> list[FastaRecord]:
    """Reads and parses a FASTA file (see :func:`parse_fasta`)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"FASTA file not found: {path}") from None
    return parse_fasta(text, source=str(path))


# ---------------------------------------------------------------------------------------
# A3M.
# ---------------------------------------------------------------------------------------

_INSERTION_RUN = re.compile(r"[a-z]+")
_REMOVE_LOWERCASE = str.maketrans("", "", "abcdefghijklmnopqrstuvwxyz")


def _a3m_row(row: str) -> tuple[str, list[int]]:
    """(aligned sequence without insertions, deletion vector) of one A3M row.

    The deletion count of column j is the number of lower-case letters right before the
    j-th non-lower-case character; insertions after the last column are dropped.
    """
    row = row.replace(".", "")  # Optional gaps in insert columns.
    aligned = row.translate(_REMOVE_LOWERCASE)
    deletions = [0] * len(aligned)
    inserted_so_far = 0
    for run in _INSERTION_RUN.finditer(row):
        column = run.start() - inserted_so_far
        run_length = run.end() - run.start()
        inserted_so_far += run_length
        if column < len(aligned):
            deletions[column] = run_length
    return aligned, deletions


def parse_a3m(text: str, source: str = "<string>") -> Msa:
    """Parses an A3M alignment (AlphaFold semantics; the first row is the query).

    Lower-case letters are insertions: the number of them before each aligned column
    goes into the deletion matrix, and they are removed from the row. ``.`` (gap in an
    insert column) is dropped as well. Other characters are kept as they are (unknown
    letters become X in the MSA features).

    Raises:
      ParseError: no sequence, sequence text before the first header, or a row whose
        length after removing insertions differs from the query's (names the record and
        the line of its header).
    """
    sequences, deletion_matrix, descriptions = [], [], []
    query_length = None
    for entry in _iter_raw_entries(text, source, allow_comments=True):
        row = "".join("".join(chunk.split()) for _, chunk in entry.chunks)
        aligned, deletions = _a3m_row(row)
        if query_length is None:
            if not aligned:
                raise ParseError(
                    "the query (first row) has no aligned residue",
                    source=source,
                    line=entry.header_line,
                    record=entry.header,
                )
            query_length = len(aligned)
        elif len(aligned) != query_length:
            raise ParseError(
                f"aligned row has {len(aligned)} columns after removing insertions, but the query has {query_length}",
                source=source,
                line=entry.header_line,
                record=entry.header.split()[0] if entry.header else "",
            )
        sequences.append(aligned)
        deletion_matrix.append(deletions)
        descriptions.append(entry.header)
    if not sequences:
        raise ParseError("no sequence found in A3M alignment", source=source)
    return Msa(sequences=sequences, deletion_matrix=deletion_matrix, descriptions=descriptions)


# ---------------------------------------------------------------------------------------
# Stockholm.
# ---------------------------------------------------------------------------------------


def _is_sto_sequence_line(line: str) -> bool:
    return bool(line.strip()) and not line.startswith(("#", "//"))


def _read_stockholm(text: str, source: str):
    """(name -> aligned text, name -> first line, name -> DE text), in file order."""
    sequences: dict[str, list[str]] = collections.OrderedDict()
    first_line: dict[str, int] = {}
    de_text: dict[str, str] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if line.startswith("#=GS"):
            columns = line.split(maxsplit=3)
            if len(columns) >= 3 and columns[2] == "DE":
                de_text[columns[1]] = columns[3].strip() if len(columns) == 4 else ""
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "//")):
            continue
        fields = stripped.split()
        if len(fields) != 2:
            raise ParseError(
                f'expected "<name> <aligned sequence>", found {len(fields)} fields',
                source=source,
                line=line_no,
                record=fields[0],
            )
        name, aligned = fields
        if name not in sequences:
            sequences[name] = []
            first_line[name] = line_no
        sequences[name].append(aligned)
    return ({k: "".join(v) for k, v in sequences.items()}, first_line, de_text)


def parse_stockholm(text: str, source: str = "<string>") -> Msa:
    """Parses a Stockholm alignment (AlphaFold semantics; the first row is the query).

    Rows are keyed by name (a name repeated in later blocks continues its row). Columns
    in which the query has a gap (``-`` or ``.``) are dropped from every row; a row's
    residues in those columns count as deletions before the next kept column.

    Returns:
      Msa with descriptions ``'<name>'`` or ``'<name> <#=GS DE text>'``.

    Raises:
      ParseError: a malformed sequence line, no sequence, or a row whose aligned length
        differs from the query's (names the record and the line of its first block).
    """
    rows, first_line, de_text = _read_stockholm(text, source)
    if not rows:
        raise ParseError("no sequence found in Stockholm alignment", source=source)
    names = list(rows)
    query = rows[names[0]]
    width = len(query)
    for name in names[1:]:
        if len(rows[name]) != width:
            raise ParseError(
                f"aligned row has {len(rows[name])} columns, but the query row {names[0]!r} has {width}",
                source=source,
                line=first_line[name],
                record=name,
            )

    # [N, W] byte matrix; vectorised version of AlphaFold's per-character loops.
    matrix = np.frombuffer("".join(rows[n] for n in names).encode("latin-1", "replace"), dtype=np.uint8).reshape(
        len(names), width
    )
    is_gap = (matrix == ord("-")) | (matrix == ord("."))
    keep = ~is_gap[0]
    keep_columns = np.flatnonzero(keep)
    if keep_columns.size == 0:
        raise ParseError(
            "the query (first row) has no aligned residue", source=source, line=first_line[names[0]], record=names[0]
        )
    inserted = (~is_gap) & ~keep[None, :]
    counts = np.cumsum(inserted, axis=1)[:, keep_columns]
    deletions = np.diff(counts, axis=1, prepend=0).astype(np.int64)
    kept = matrix[:, keep_columns]

    sequences = [bytes(r).decode("latin-1") for r in kept]
    descriptions = [f"{n} {de_text[n]}" if de_text.get(n) else n for n in names]
    return Msa(sequences=sequences, deletion_matrix=deletions.tolist(), descriptions=descriptions)


def _stockholm_line_seqname(line: str) -> str:
    return line.strip().partition(" ")[0]


def _keep_stockholm_line(line: str, seqnames: set[str]) -> bool:
    """AlphaFold's filter: markup that stays, plus rows / #=GS lines of kept sequences."""
    if not line.strip():
        return True
    if line.strip() == "//":
        return True
    if line.startswith("# STOCKHOLM"):
        return True
    if line.startswith("#=GC RF"):
        return True
    if line.startswith("#=GS"):
        columns = line.split(maxsplit=2)
        return len(columns) > 1 and columns[1] in seqnames
    if line.startswith("#"):
        return False
    return _stockholm_line_seqname(line) in seqnames


def truncate_stockholm_text(text: str, max_sequences: int) -> str:
    """Keeps the first ``max_sequences`` sequences (query included) of a Stockholm text.

    Same result as :func:`truncate_stockholm_msa` on a file holding ``text``.
    """
    if max_sequences < 1:
        raise ValueError(f"max_sequences must be >= 1, got {max_sequences}")
    seqnames: set[str] = set()
    lines = text.splitlines(keepends=True)
    for line in lines:
        if _is_sto_sequence_line(line):
            seqnames.add(_stockholm_line_seqname(line))
            if len(seqnames) >= max_sequences:
                break
    return "".join(line for line in lines if _keep_stockholm_line(line, seqnames))


def truncate_stockholm_msa(stockholm_path: PathLike, max_sequences: int) -> str:
    """Reads a Stockholm file keeping only its first ``max_sequences`` sequences.

    AlphaFold's ``truncate_stockholm_msa``: the depth limit is applied while reading
    (the query counts as one of the ``max_sequences``), with only per-residue / per-file
    markup other than ``#=GS`` of kept sequences and ``#=GC RF`` dropped. Streams the
    file twice instead of holding it whole, so huge jackhmmer outputs stay cheap.
    """
    if max_sequences < 1:
        raise ValueError(f"max_sequences must be >= 1, got {max_sequences}")
    seqnames: set[str] = set()
    with open(stockholm_path) as f:
        for line in f:
            if _is_sto_sequence_line(line):
                seqnames.add(_stockholm_line_seqname(line))
                if len(seqnames) >= max_sequences:
                    break
        f.seek(0)
        return "".join(line for line in f if _keep_stockholm_line(line, seqnames))


def deduplicate_stockholm_msa(stockholm_msa: str) -> str:
    """Removes rows whose sequence, restricted to the query's columns, was seen before."""
    rows: dict[str, str] = collections.defaultdict(str)
    for line in stockholm_msa.splitlines():
        if _is_sto_sequence_line(line):
            name, aligned = line.split()
            rows[name] += aligned
    if not rows:
        return stockholm_msa
    query = next(iter(rows.values()))
    mask = [c != "-" for c in query]
    seen, keep = set(), set()
    for name, aligned in rows.items():
        key = "".join(itertools.compress(aligned, mask))
        if key not in seen:
            seen.add(key)
            keep.add(name)
    return "\n".join(line for line in stockholm_msa.splitlines() if _keep_stockholm_line(line, keep)) + "\n"


def remove_empty_columns_from_stockholm_msa(stockholm_msa: str) -> str:
    """Removes all-gap columns, block by block (a block ends at its ``#=GC RF`` line)."""
    out: dict[int, str] = {}
    pending: dict[int, str] = {}
    for i, line in enumerate(stockholm_msa.splitlines()):
        if line.startswith("#=GC RF"):
            pending[i] = line
            width = len(line.rpartition(" ")[2])
            mask = [False] * width
            for j, pending_line in pending.items():
                if j == i:
                    continue
                alignment = pending_line.rpartition(" ")[2]
                for col in range(min(width, len(alignment))):
                    if alignment[col] != "-":
                        mask[col] = True
            for j, pending_line in pending.items():
                if not any(mask):
                    out[j] = ""
                else:
                    prefix, _, alignment = pending_line.rpartition(" ")
                    out[j] = f"{prefix} {''.join(itertools.compress(alignment, mask))}"
            pending = {}
        elif _is_sto_sequence_line(line):
            pending[i] = line
        else:
            out[i] = line
    out.update(pending)  # Rows after the last RF line (none in HMMER output).
    return "\n".join(out[i] for i in sorted(out))


def convert_stockholm_to_a3m(
    stockholm_format: str, max_sequences: int | None = None, remove_first_row_gaps: bool = True
) -> str:
    """Converts a Stockholm alignment to A3M (AlphaFold's conversion).

    With ``remove_first_row_gaps`` the query's gap columns become lower-case insertions
    (gaps there are dropped), so :func:`parse_a3m` of the result equals
    :func:`parse_stockholm` of the input. ``.`` characters are always removed.
    Descriptions come from ``#=GS <name> DE`` lines (``>name description``).
    """
    rows: dict[str, str] = collections.OrderedDict()
    for line in stockholm_format.splitlines():
        if _is_sto_sequence_line(line):
            name, aligned = line.split(maxsplit=1)
            if name not in rows:
                if max_sequences and len(rows) >= max_sequences:
                    continue
                rows[name] = ""
            rows[name] += aligned.strip()
    descriptions: dict[str, str] = {}
    for line in stockholm_format.splitlines():
        if line.startswith("#=GS"):
            columns = line.split(maxsplit=3)
            if len(columns) >= 3 and columns[2] == "DE" and columns[1] in rows:
                descriptions[columns[1]] = columns[3] if len(columns) == 4 else ""
    if not rows:
        return ""
    query_non_gaps = None
    if remove_first_row_gaps:
        query_non_gaps = [c not in _GAPS for c in next(iter(rows.values()))]
    chunks = []
    for name, aligned in rows.items():
        if query_non_gaps is not None:
            out = "".join(
                res if keep else res.lower() for keep, res in zip(query_non_gaps, aligned) if keep or res not in _GAPS
            )
        else:
            out = aligned.replace(".", "")
        chunks.append(f">{name} {descriptions.get(name, '')}\n{out}")
    return "\n".join(chunks) + "\n"


# ---------------------------------------------------------------------------------------
# HHR (HHsearch / HHblits).
# ---------------------------------------------------------------------------------------

# 'Q <name> <start> <aligned> <end> (<length>)' / same with 'T'.
_HHR_ALIGNMENT_LINE = re.compile(r"^[QT] (\S+)\s+(\d+) ([A-Za-z-]+)\s+(\d+) \(\s*(\d+)\)\s*$")
_HHR_SUMMARY_FIELD = {
    "aligned_cols": re.compile(r"Aligned_cols=\s*([0-9.eE+-]+)"),
    "sum_probs": re.compile(r"Sum_probs=\s*([0-9.eE+-]+)"),
}
_HHR_SKIPPED_TRACKS = ("ss_dssp", "ss_pred", "ss_conf", "Consensus")


def _hhr_indices(aligned: str, start: int) -> list[int]:
    indices = []
    counter = start
    for symbol in aligned:
        if symbol == "-":
            indices.append(-1)
        else:
            indices.append(counter)
            counter += 1
    return indices


def _parse_hhr_hit(lines: Sequence[tuple[int, str]], source: str) -> TemplateHit:
    header_line_no, header = lines[0]
    try:
        number = int(header.split()[-1])
    except (IndexError, ValueError):
        raise ParseError(f"cannot read the hit number from {header!r}", source=source, line=header_line_no) from None
    if len(lines) < 3 or not lines[1][1].startswith(">"):
        raise ParseError(
            "hit block must continue with a '>name' line", source=source, line=header_line_no, record=f"No {number}"
        )
    name = lines[1][1][1:]
    record = name.split()[0] if name.split() else f"No {number}"
    summary_no, summary = lines[2]
    values = {}
    for key, pattern in _HHR_SUMMARY_FIELD.items():
        match = pattern.search(summary)
        if match is None:
            raise ParseError(
                f"summary line has no {key} field: {summary!r}", source=source, line=summary_no, record=record
            )
        values[key] = float(match.group(1))

    query, hit_sequence = "", ""
    indices_query: list[int] = []
    indices_hit: list[int] = []
    block_length = None
    for line_no, line in lines[3:]:
        if not line.startswith(("Q ", "T ")):
            continue
        fields = line.split()
        if len(fields) > 1 and fields[1] in _HHR_SKIPPED_TRACKS:
            continue
        match = _HHR_ALIGNMENT_LINE.match(line.rstrip())
        if match is None:
            raise ParseError(f"cannot parse alignment line {line!r}", source=source, line=line_no, record=record)
        start = int(match.group(2)) - 1  # 0-based.
        aligned = match.group(3)
        end = int(match.group(4))
        if line.startswith("Q "):
            block_length = end - start + aligned.count("-")
            if block_length != len(aligned):
                raise ParseError(
                    f"query segment {start + 1}-{end} with {aligned.count('-')} gaps does "
                    f"not span {len(aligned)} columns",
                    source=source,
                    line=line_no,
                    record=record,
                )
            query += aligned
            indices_query.extend(_hhr_indices(aligned, start))
        else:
            if block_length != len(aligned):
                raise ParseError(
                    f"template segment has {len(aligned)} columns, query segment {block_length}",
                    source=source,
                    line=line_no,
                    record=record,
                )
            hit_sequence += aligned
            indices_hit.extend(_hhr_indices(aligned, start))
    if len(query) != len(hit_sequence):
        raise ParseError(
            f"query alignment ({len(query)} columns) and template alignment ({len(hit_sequence)}) differ in length",
            source=source,
            line=header_line_no,
            record=record,
        )
    return TemplateHit(
        index=number,
        name=name,
        aligned_cols=int(values["aligned_cols"]),
        sum_probs=values["sum_probs"],
        query=query,
        hit_sequence=hit_sequence,
        indices_query=indices_query,
        indices_hit=indices_hit,
    )


def parse_hhr(text: str, source: str = "<string>") -> list[TemplateHit]:
    """Parses an HHsearch / HHblits ``.hhr`` file into template hits (AlphaFold semantics).

    One hit per ``No <n>`` block: ``name`` is the whole ``>`` line, ``aligned_cols`` and
    ``sum_probs`` come from the summary line, ``query`` / ``hit_sequence`` are the
    concatenated aligned segments, and ``indices_*`` are 0-based residue positions with
    -1 at gaps. A file without hits gives an empty list.
    """
    lines = list(enumerate(text.splitlines(), start=1))
    starts = [i for i, (_, line) in enumerate(lines) if line.startswith("No ")]
    starts.append(len(lines))
    return [_parse_hhr_hit(lines[starts[k] : starts[k + 1]], source) for k in range(len(starts) - 1)]


# ---------------------------------------------------------------------------------------
# hmmsearch template hits.
# ---------------------------------------------------------------------------------------

_HMMSEARCH_DESCRIPTION = re.compile(r"^>?([a-z0-9]+)_(\w+)/([0-9]+)-([0-9]+).*protein length:([0-9]+) *(.*)$")


def _hmmsearch_indices(sequence: str, start: int) -> list[int]:
    """Positions of match-state residues; lower-case insertions advance the counter."""
    indices = []
    counter = start
    for symbol in sequence:
        if symbol == "-":
            indices.append(-1)
        elif symbol.islower():
            counter += 1
        else:
            indices.append(counter)
            counter += 1
    return indices


def parse_hmmsearch_a3m(
    query_sequence: str, a3m_string: str, skip_first: bool = True, source: str = "<string>"
) -> list[TemplateHit]:
    """Template hits from hmmsearch output converted to A3M (AlphaFold semantics).

    Rows whose description lacks ``mol:protein`` are skipped (their index is still
    consumed); ``name`` is ``<pdbid>_<chain>``; ``indices_hit`` starts at the hit's
    ``/<start>-`` position minus one; ``hit_sequence`` is upper-cased (insertions
    included, as in AlphaFold).
    """
    entries = list(_iter_raw_entries(a3m_string, source, allow_comments=True))
    if skip_first:
        entries = entries[1:]
    indices_query = _hmmsearch_indices(query_sequence, start=0)
    hits = []
    for index, entry in enumerate(entries, start=1):
        if "mol:protein" not in entry.header:
            continue
        match = _HMMSEARCH_DESCRIPTION.match(entry.header.strip())
        if match is None:
            raise ParseError(
                f"cannot parse hmmsearch hit description {entry.header!r}",
                source=source,
                line=entry.header_line,
                record=entry.header.split()[0] if entry.header else "",
            )
        hit_sequence = "".join(chunk for _, chunk in entry.chunks)
        hits.append(
            TemplateHit(
                index=index,
                name=f"{match[1]}_{match[2]}",
                aligned_cols=sum(r.isupper() and r != "-" for r in hit_sequence),
                sum_probs=None,
                query=query_sequence,
                hit_sequence=hit_sequence.upper(),
                indices_query=indices_query,
                indices_hit=_hmmsearch_indices(hit_sequence, start=int(match[3]) - 1),
            )
        )
    return hits


def parse_hmmsearch_sto(text: str, query_sequence: str, source: str = "<string>") -> list[TemplateHit]:
    """Template hits from an hmmsearch Stockholm file (``hmm_output.sto``).

    AlphaFold's ``Hmmsearch.get_template_hits``: the Stockholm text is converted to A3M
    without removing the first row's gap columns (every row is a hit; the query is not
    part of hmmsearch output) and every row is read as a hit.
    """
    rows, first_line, _ = _read_stockholm(text, source)
    widths = {len(r) for r in rows.values()}
    if len(widths) > 1:
        width = len(next(iter(rows.values())))
        for name, row in rows.items():
            if len(row) != width:
                raise ParseError(
                    f"aligned row has {len(row)} columns, the first row {width}",
                    source=source,
                    line=first_line[name],
                    record=name,
                )
    a3m = convert_stockholm_to_a3m(text, remove_first_row_gaps=False)
    return parse_hmmsearch_a3m(query_sequence=query_sequence, a3m_string=a3m, skip_first=False, source=source)
