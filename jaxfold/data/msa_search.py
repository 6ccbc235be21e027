"""MSAs for a query sequence: precomputed files, a jackhmmer search, or the query alone.

One entry point, :func:`get_msas`, in three modes:

``precomputed``
    Reads the alignments of one sequence from a directory laid out as AlphaFold / OpenFold
    write them (``uniref90_hits.sto|a3m``, ``mgnify_hits.sto|a3m``,
    ``bfd_uniclust_hits.a3m`` / ``bfd_uniref_hits.a3m``, ``small_bfd_hits.sto``) or as
    ColabFold does (``non_pairing.a3m``); any other ``*.a3m`` / ``*.sto`` is used too.
    Multimer pairing files (``uniprot_hits.*``, ColabFold ``pairing.a3m``) and template
    hits (``hmm_output.sto``, ``pdb_hits.*``, ``*.hhr``) are skipped.
``search``
    jackhmmer through ``pyhmmer`` (HMMER3 in-process, no binaries) against FASTA
    databases, with AlphaFold's flags; HHblits only when ``hhblits`` is on ``PATH``.
``single_sequence``
    The query as a one-row MSA.

The result is a dict ``database name -> Msa`` in AlphaFold's order (UniRef90, BFD,
MGnify, then others), ready for :func:`jaxfold.data.msa_features.make_msa_features`.
Names are file stems without ``_hits`` (``uniref90``, ``bfd_uniclust``, ``mgnify``,
``non_pairing``, ...). Searches can be written to ``<output_dir>/<name>/<db>_hits.a3m``
so that a rerun with ``mode='precomputed', msa_dir=<output_dir>`` reads them back.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from jaxfold.common.files import PathLike
from jaxfold.data import parsers
from jaxfold.data.msa_features import (
    DEFAULT_MGNIFY_MAX_HITS,
    DEFAULT_UNIREF_MAX_HITS,
    database_rank,
    order_and_limit_msas,
)
from jaxfold.data.parsers import FastaRecord, Msa

logger = logging.getLogger(__name__)

MODES = ("precomputed", "search", "single_sequence")

# File stems (lower case) that are not monomer MSAs.
_SKIPPED_STEMS = {
    "uniprot_hits": "UniProt hits are for multimer MSA pairing",
    "pairing": "ColabFold pairing.a3m is for multimer MSA pairing",
    "hmm_output": "template hits (hmmsearch output)",
    "pdb_hits": "template hits",
}
_MSA_SUFFIXES = (".sto", ".a3m")

# AlphaFold's jackhmmer settings (alphafold/data/tools/jackhmmer.py defaults).
JACKHMMER_DEFAULTS = dict(n_iter=1, e_value=1e-4, filter_f1=0.0005, filter_f2=0.00005, filter_f3=0.0000005)
# HMMER's jackhmmer defaults for what AlphaFold leaves unset.
_JACKHMMER_INCDOM_E = 1e-3
_JACKHMMER_DOM_E = 10.0
# AlphaFold's HHblits flags (alphafold/data/tools/hhblits.py defaults).
HHBLITS_FLAGS = (
    "-n",
    "3",
    "-e",
    "0.001",
    "-maxseq",
    "1000000",
    "-realign_max",
    "100000",
    "-maxfilt",
    "100000",
    "-min_prefilter_hits",
    "1000",
)


class MsaSearchError(RuntimeError):
    """An MSA could not be found, read or computed."""


def msa_name_from_path(path: PathLike) -> str:
    """``uniref90_hits.sto`` -> ``uniref90``; ``non_pairing.a3m`` -> ``non_pairing``."""
    stem = Path(path).name
    for suffix in _MSA_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return stem[: -len("_hits")] if stem.endswith("_hits") else stem


def read_msa(path: PathLike, max_sequences: int | None = None) -> Msa:
    """Parses an ``.a3m`` or ``.sto`` file, keeping at most ``max_sequences`` rows.

    Stockholm files are truncated while read (AlphaFold's ``truncate_stockholm_msa``).
    """
    path = Path(path)
    if path.suffix == ".sto":
        if max_sequences is not None:
            text = parsers.truncate_stockholm_msa(path, max_sequences)
        else:
            text = path.read_text()
        return parsers.parse_stockholm(text, source=str(path))
    if path.suffix == ".a3m":
        msa = parsers.parse_a3m(path.read_text(), source=str(path))
        return msa.truncate(max_sequences) if max_sequences is not None else msa
    raise ValueError(f"{path}: unknown alignment format (expected .a3m or .sto)")


def _max_hits(name: str, uniref_max_hits: int | None, mgnify_max_hits: int | None) -> int | None:
    key = name.lower()
    if key.startswith("uniref90"):
        return uniref_max_hits
    if key.startswith("mgnify"):
        return mgnify_max_hits
    return None


def _comparable(a: str, b: str) -> bool:
    """Same residues, except where either side has an ambiguous / unknown letter."""
    if len(a) != len(b):
        return False
    loose = set("XBZUOJ")
    return all(x == y or x in loose or y in loose for x, y in zip(a.upper(), b.upper()))


def _check_query_row(msa: Msa, query: FastaRecord, source: PathLike) -> None:
    first = msa.sequences[0]
    if not _comparable(first, query.sequence):
        raise MsaSearchError(
            f"{source}: its first row (the query of that alignment, {len(first)} columns) "
            f"is not the query sequence {query.name!r} ({len(query.sequence)} residues); "
            "the alignment belongs to another sequence."
        )


def find_msa_files(directory: PathLike) -> dict[str, Path]:
    """Alignment files of one sequence directory, ``name -> path``, AlphaFold-ordered.

    When both ``X_hits.sto`` and ``X_hits.a3m`` exist, the Stockholm file wins (it is
    AlphaFold's own output; OpenFold writes the A3M conversion).
    """
    directory = Path(directory)
    found: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.suffix not in _MSA_SUFFIXES:
            continue
        stem = path.name[: -len(path.suffix)].lower()
        if stem in _SKIPPED_STEMS:
            logger.info("Skipping %s: %s.", path, _SKIPPED_STEMS[stem])
            continue
        name = msa_name_from_path(path)
        if name in found:
            if found[name].suffix == ".sto":
                logger.info("Skipping %s: %s is used instead.", path, found[name])
                continue
            if path.suffix != ".sto":
                continue
        found[name] = path
    names = sorted(found, key=lambda n: (database_rank(n), n))
    return {n: found[n] for n in names}


def _sequence_dir(msa_dir: PathLike, query: FastaRecord) -> Path:
    """``msa_dir/<name>`` (exact, sanitised, then case-insensitive match) or ``msa_dir``."""
    msa_dir = Path(msa_dir)
    if not msa_dir.is_dir():
        raise MsaSearchError(f"MSA directory not found: {msa_dir}")
    for candidate in (query.name, query.safe_name):
        sub = msa_dir / candidate
        if sub.is_dir():
            return sub
    wanted = {query.name.lower(), query.safe_name.lower()}
    matches = [p for p in msa_dir.iterdir() if p.is_dir() and p.name.lower() in wanted]
    if len(matches) == 1:
        return matches[0]
    return msa_dir


def load_precomputed_msas(
    query: FastaRecord,
    msa_dir: PathLike,
    *,
    uniref_max_hits: int | None = DEFAULT_UNIREF_MAX_HITS,
    mgnify_max_hits: int | None = DEFAULT_MGNIFY_MAX_HITS,
    check_query: bool = True,
) -> dict[str, Msa]:
    """The precomputed alignments of ``query``: ``msa_dir/<name>/`` or ``msa_dir`` itself.

    Raises:
      MsaSearchError: missing directory, no alignment file in it, or (``check_query``)
        an alignment whose first row is not the query.
    """
    directory = _sequence_dir(msa_dir, query)
    files = find_msa_files(directory)
    if not files:
        raise MsaSearchError(
            f"No alignment for {query.name!r} in {directory} (nor a sub-directory "
            f"{query.safe_name!r} holding them): expected "
            "uniref90_hits.sto|a3m, mgnify_hits.sto|a3m, bfd_uniclust_hits.a3m, "
            "bfd_uniref_hits.a3m, small_bfd_hits.sto, non_pairing.a3m or another "
            "*.a3m / *.sto (uniprot_hits, pairing.a3m and template hits are not used)."
        )
    msas = {}
    for name, path in files.items():
        msa = read_msa(path, _max_hits(name, uniref_max_hits, mgnify_max_hits))
        if check_query:
            _check_query_row(msa, query, path)
        msas[name] = msa
        logger.info("%s: %d sequences from %s", name, len(msa), path)
    return msas


# ---------------------------------------------------------------------------------------
# jackhmmer (pyhmmer).
# ---------------------------------------------------------------------------------------


def _import_pyhmmer():
    try:
        import pyhmmer  # noqa: F401
        from pyhmmer import easel, hmmer  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MsaSearchError("mode='search' needs the 'pyhmmer' package (pip install pyhmmer)") from e
    return pyhmmer


@functools.lru_cache(maxsize=4)
def _load_database(paths: tuple[str, ...], stamps: tuple[tuple[int, int], ...]):
    """Digital sequence block of the concatenated FASTA files (cached per file state)."""
    del stamps  # Only part of the cache key.
    pyhmmer = _import_pyhmmer()
    alphabet = pyhmmer.easel.Alphabet.amino()
    sequences = []
    for path in paths:
        with pyhmmer.easel.SequenceFile(path, digital=True, alphabet=alphabet, format="fasta") as f:
            sequences.extend(f.read_block())
    return pyhmmer.easel.DigitalSequenceBlock(alphabet, sequences)


def _database_paths(spec: PathLike | Sequence[PathLike]) -> tuple[str, ...]:
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    paths = []
    for item in items:
        path = Path(item)
        if not path.is_file():
            raise MsaSearchError(f"Sequence database not found: {path}")
        paths.append(str(path.resolve()))
    if not paths:
        raise MsaSearchError("Empty list of database files.")
    return tuple(paths)


def jackhmmer_search(
    query: FastaRecord,
    database: PathLike | Sequence[PathLike],
    *,
    n_iter: int = JACKHMMER_DEFAULTS["n_iter"],
    e_value: float = JACKHMMER_DEFAULTS["e_value"],
    filter_f1: float = JACKHMMER_DEFAULTS["filter_f1"],
    filter_f2: float = JACKHMMER_DEFAULTS["filter_f2"],
    filter_f3: float = JACKHMMER_DEFAULTS["filter_f3"],
    z_value: int | None = None,
    dom_e: float | None = None,
    incdom_e: float | None = None,
    cpus: int = 1,
) -> str:
    """jackhmmer of ``query`` against FASTA file(s); returns the ``-A`` Stockholm text.

    Same as AlphaFold's ``jackhmmer -N n_iter --F1 .. --F2 .. --F3 .. --incE e -E e``:
    the alignment holds the query first, then every included domain of the last
    iteration. ``z_value`` (``-Z``) defaults to the number of database sequences, as the
    binary does; ``dom_e`` / ``incdom_e`` default to jackhmmer's 10 / 0.001. Several
    files are searched as one concatenated database.
    """
    pyhmmer = _import_pyhmmer()
    paths = _database_paths(database)
    stamps = tuple((os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in paths)
    block = _load_database(paths, stamps)
    alphabet = block.alphabet
    text_query = pyhmmer.easel.TextSequence(
        name=query.name.encode(),
        sequence=query.sequence,
        description=query.description[len(query.name) :].strip().encode(),
    )
    digital_query = text_query.digitize(alphabet)
    options = dict(
        E=e_value,
        incE=e_value,
        F1=filter_f1,
        F2=filter_f2,
        F3=filter_f3,
        domE=_JACKHMMER_DOM_E if dom_e is None else dom_e,
        incdomE=_JACKHMMER_INCDOM_E if incdom_e is None else incdom_e,
    )
    if z_value:
        options["Z"] = z_value
    result = None
    for result in pyhmmer.hmmer.jackhmmer(digital_query, block, max_iterations=n_iter, cpus=cpus, **options):
        pass
    if result is None:  # pragma: no cover - pyhmmer yields one result per query
        raise MsaSearchError("jackhmmer returned no result")
    buffer = io.BytesIO()
    result.msa.write(buffer, "stockholm")
    sto = buffer.getvalue().decode()
    logger.info(
        "jackhmmer %s vs %s: %d hits included after %d iteration(s)",
        query.name,
        ", ".join(paths),
        sum(h.included for h in result.hits),
        result.iteration,
    )
    return sto


def hhblits_search(query: FastaRecord, databases: Sequence[PathLike], *, binary: str = "hhblits", cpus: int = 4) -> str:
    """HHblits of ``query`` against HH-suite databases (AlphaFold's flags); A3M text."""
    with tempfile.TemporaryDirectory() as tmp:
        fasta = Path(tmp, "query.fasta")
        fasta.write_text(f">{query.name}\n{query.sequence}\n")
        out = Path(tmp, "out.a3m")
        cmd = [binary, "-i", str(fasta), "-cpu", str(cpus), "-oa3m", str(out), "-o", os.devnull, *HHBLITS_FLAGS]
        for db in databases:
            cmd += ["-d", str(db)]
        logger.info("Running %s", " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise MsaSearchError(f"hhblits failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        return out.read_text()


def _write_a3m(output_dir: PathLike | None, query: FastaRecord, name: str, a3m: str) -> Path | None:
    if output_dir is None:
        return None
    directory = Path(output_dir) / query.safe_name
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}_hits.a3m"
    tmp = path.with_suffix(".a3m.tmp")
    tmp.write_text(a3m)
    tmp.replace(path)
    return path


def search_msas(
    query: FastaRecord,
    databases: Mapping[str, PathLike | Sequence[PathLike]],
    *,
    hhblits_databases: Sequence[PathLike] | None = None,
    output_dir: PathLike | None = None,
    uniref_max_hits: int | None = DEFAULT_UNIREF_MAX_HITS,
    mgnify_max_hits: int | None = DEFAULT_MGNIFY_MAX_HITS,
    cpus: int = 1,
    **jackhmmer_options,
) -> dict[str, Msa]:
    """jackhmmer against each FASTA database (+ HHblits when possible); see get_msas."""
    if not databases and not hhblits_databases:
        raise MsaSearchError(
            "mode='search' needs at least one database (databases={'uniref90': path, 'mgnify': path, ...})"
        )
    msas: dict[str, Msa] = {}
    for name, database in (databases or {}).items():
        sto = jackhmmer_search(query, database, cpus=cpus, **jackhmmer_options)
        limit = _max_hits(name, uniref_max_hits, mgnify_max_hits)
        if limit is not None:
            sto = parsers.truncate_stockholm_text(sto, limit)
        msas[name] = parsers.parse_stockholm(sto, source=f"jackhmmer[{name}]")
        written = _write_a3m(output_dir, query, name, parsers.convert_stockholm_to_a3m(sto))
        logger.info("%s: %d sequences%s", name, len(msas[name]), f" (written to {written})" if written else "")

    hhblits = shutil.which("hhblits")
    if hhblits is None:
        message = (
            "hhblits is not on PATH: the BFD / UniRef30 (HHblits) search is skipped; "
            "the MSA has only the jackhmmer databases "
            f"({', '.join(databases or {}) or 'none'})."
        )
        logger.info(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    elif not hhblits_databases:
        logger.warning("No HHblits databases given: the BFD / UniRef30 search is skipped.")
    else:
        a3m = hhblits_search(query, hhblits_databases, binary=hhblits, cpus=max(cpus, 1))
        msas["bfd_uniref"] = parsers.parse_a3m(a3m, source="hhblits")
        _write_a3m(output_dir, query, "bfd_uniref", a3m)
    return dict(order_and_limit_msas(msas, uniref_max_hits=uniref_max_hits, mgnify_max_hits=mgnify_max_hits))


def single_sequence_msa(query: FastaRecord) -> dict[str, Msa]:
    """The query alone as an MSA (no deletions)."""
    return {
        "single_sequence": Msa(
            sequences=[query.sequence], deletion_matrix=[[0] * len(query.sequence)], descriptions=[query.description]
        )
    }


def get_msas(
    query: FastaRecord,
    mode: str,
    *,
    msa_dir: PathLike | None = None,
    databases: Mapping[str, PathLike | Sequence[PathLike]] | None = None,
    hhblits_databases: Sequence[PathLike] | None = None,
    output_dir: PathLike | None = None,
    uniref_max_hits: int | None = DEFAULT_UNIREF_MAX_HITS,
    mgnify_max_hits: int | None = DEFAULT_MGNIFY_MAX_HITS,
    cpus: int = 1,
    check_query: bool = True,
    **jackhmmer_options,
) -> dict[str, Msa]:
    """MSAs of ``query`` as ``{database name: Msa}`` in AlphaFold's order.

    Args:
      query: the query record (see :func:`jaxfold.data.parsers.read_fasta`).
      mode: ``'precomputed'``, ``'search'`` or ``'single_sequence'``.
      msa_dir: (precomputed) directory holding ``<query name>/`` sub-directories, or the
        alignment files of this query directly.
      databases: (search) ``{'uniref90': fasta, 'mgnify': fasta, ...}``; a value may be
        a list of FASTA files searched as one database.
      hhblits_databases: (search) HH-suite database prefixes, used only when
        ``hhblits`` is on PATH; otherwise a RuntimeWarning says the search is skipped.
      output_dir: (search) write each alignment to ``output_dir/<name>/<db>_hits.a3m``.
      uniref_max_hits, mgnify_max_hits: AlphaFold's depth limits (query included).
      cpus: threads for jackhmmer.
      check_query: (precomputed) require every alignment's first row to be the query.
      **jackhmmer_options: ``n_iter``, ``e_value``, ``filter_f1/2/3``, ``z_value``,
        ``dom_e``, ``incdom_e`` (see :func:`jackhmmer_search`).
    """
    if mode == "precomputed":
        if msa_dir is None:
            raise MsaSearchError("mode='precomputed' needs msa_dir")
        return load_precomputed_msas(
            query, msa_dir, uniref_max_hits=uniref_max_hits, mgnify_max_hits=mgnify_max_hits, check_query=check_query
        )
    if mode == "search":
        return search_msas(
            query,
            databases or {},
            hhblits_databases=hhblits_databases,
            output_dir=output_dir,
            uniref_max_hits=uniref_max_hits,
            mgnify_max_hits=mgnify_max_hits,
            cpus=cpus,
            **jackhmmer_options,
        )
    if mode == "single_sequence":
        return single_sequence_msa(query)
    raise ValueError(f"Unknown MSA mode {mode!r}; expected one of {MODES}")
