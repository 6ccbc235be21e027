"""FASTA for complexes: one record per complex, its chains joined with ``:``.

The convention is ColabFold's::

    >mdm2_p53
    KEVLFYLGQYIMTKRLYDEKQQHIVYCSNDLLGDLF:ETFSDLWKLLPEN
    >homodimer
    SGHTAHVDEAVKHAEEAVAH:SGHTAHVDEAVKHAEEAVAH

* every ``:`` starts a new chain; a record without ``:`` is a single chain (a monomer);
* a homomer is written by repeating the sequence, once per copy;
* chains get PDB chain IDs in order: ``A``-``Z``, ``a``-``z``, ``0``-``9`` (62 at most,
  the PDB format's limit, as AlphaFold-Multimer's ``_make_chain_id_map``);
* sequence lines may wrap (``:`` may sit anywhere, also at a line end), white space is
  ignored, letters are upper-cased, one terminal ``*`` per chain (stop) is dropped;
  residues are the 20 standard letters, ``X`` and ``B Z U O`` (mapped to ``X``).

Errors (:class:`jaxfold.data.parsers.ParseError`, naming the file, line and record): no
record, sequence text before a header, an empty header, an empty chain (``::``, a
leading or trailing ``:``), an illegal letter (named with its chain), more than 62 chains.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from jaxfold.common.protein import PDB_CHAIN_IDS, PDB_MAX_CHAINS
from jaxfold.data.parsers import QUERY_ALPHABET, ParseError

__all__ = ["CHAIN_SEPARATOR", "ComplexRecord", "chain_ids", "parse_complex_fasta", "read_complex_fasta"]

CHAIN_SEPARATOR = ":"


def chain_ids(num_chains: int) -> list[str]:
    """PDB chain IDs of ``num_chains`` chains: ``['A', 'B', ...]`` (at most 62)."""
    if not 1 <= num_chains <= PDB_MAX_CHAINS:
        raise ValueError(
            f"{num_chains} chains: a complex has 1 to {PDB_MAX_CHAINS} chains (the PDB chain IDs A-Z, a-z, 0-9)"
        )
    return list(PDB_CHAIN_IDS[:num_chains])


@dataclasses.dataclass(frozen=True)
class ComplexRecord:
    """One FASTA record: a complex (or a single chain).

    Attributes:
      name: first word of the header.
      description: the whole header without ``>``.
      sequences: one upper-case sequence per chain, in FASTA order.
    """

    name: str
    description: str
    sequences: tuple[str, ...]

    @property
    def chain_ids(self) -> list[str]:
        """``A``, ``B``, ... one per chain, in FASTA order."""
        return chain_ids(len(self.sequences))

    @property
    def num_chains(self) -> int:
        return len(self.sequences)

    @property
    def num_entities(self) -> int:
        """Distinct sequences (identical chains are copies of one entity)."""
        return len(set(self.sequences))


def _finish(name: str, description: str, header_line: int, text: str, source: str) -> ComplexRecord:
    if not text:
        raise ParseError("record has no sequence", source=source, line=header_line, record=name)
    chains = text.split(CHAIN_SEPARATOR)
    if len(chains) > PDB_MAX_CHAINS:
        raise ParseError(
            f"{len(chains)} chains; at most {PDB_MAX_CHAINS} are possible (one PDB chain ID each: A-Z, a-z, 0-9)",
            source=source,
            line=header_line,
            record=name,
        )
    sequences = []
    for index, chain in enumerate(chains):
        label = f"chain {index + 1} ({PDB_CHAIN_IDS[index]})"
        if chain.endswith("*"):
            chain = chain[:-1]
        if not chain:
            raise ParseError(
                f'{label} is empty (":" at the start or end of the sequence, or two ":" in a row)',
                source=source,
                line=header_line,
                record=name,
            )
        bad = sorted(set(chain) - QUERY_ALPHABET)
        if bad:
            raise ParseError(
                f"{label}: illegal residue letter(s) {''.join(bad)!r}; allowed "
                "are the 20 standard amino acids, X and B/Z/U/O, chains "
                f"separated by {CHAIN_SEPARATOR!r}",
                source=source,
                line=header_line,
                record=name,
            )
        sequences.append(chain)
    return ComplexRecord(name=name, description=description, sequences=tuple(sequences))


def parse_complex_fasta(text: str, source: str = "<string>") -> list[ComplexRecord]:
    """Parses FASTA text whose records may be complexes (chains joined with ``:``)."""
    if text.startswith("\ufeff"):
        text = text[1:]
    records: list[ComplexRecord] = []
    header: tuple[str, str, int] | None = None
    pieces: list[str] = []
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith(">"):
            if header is not None:
                records.append(_finish(*header, "".join(pieces), source))
            description = line[1:].strip()
            if not description:
                raise ParseError("empty header: '>' must be followed by a name", source=source, line=line_no)
            header, pieces = (description.split()[0], description, line_no), []
        elif not line:
            continue
        elif header is None:
            raise ParseError(
                "sequence data before the first header line (a FASTA record must start with '>name')",
                source=source,
                line=line_no,
            )
        else:
            pieces.append("".join(line.split()).upper())
    if header is not None:
        records.append(_finish(*header, "".join(pieces), source))
    if not records:
        raise ParseError("no FASTA record found", source=source)
    return records


def read_complex_fasta(path: str | os.PathLike) -> list[ComplexRecord]:
    """Reads a FASTA file of complexes (see :func:`parse_complex_fasta`)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"FASTA file not found: {path}") from None
    return parse_complex_fasta(text, source=str(path))
