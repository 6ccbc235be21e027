"""FASTA record -> AlphaFold's raw features: MSAs, templates, sequence features.

:func:`build_raw_features` is AlphaFold v2.3.2's ``DataPipeline.process`` for one monomer
chain: it returns ``{**sequence_features, **msa_features, **template_features}`` with the
same keys, dtypes and shapes (``aatype`` one-hot ``[N, 21]``, ``msa`` in HHblits ids,
``deletion_matrix_int``, ``num_alignments``, ``msa_species_identifiers``,
``template_aatype`` ``[T, N, 22]``, ...). Feed it to
:func:`jaxfold.data.feature_processing.process_features` for the model's batch.

:func:`preprocess_many` runs :func:`build_raw_features` for many sequences in parallel
worker processes (a ``concurrent.futures.ProcessPoolExecutor`` by default, Ray when asked)
and yields :class:`PreprocessResult` objects as they complete, so the caller can predict
the first structure while the other alignments are still being read or searched.

MSAs come from :func:`jaxfold.data.msa_search.get_msas` (``precomputed``, ``search`` or
``single_sequence``). Templates come from a hit list (HHsearch ``.hhr`` or hmmsearch
``.sto``) plus a folder of mmCIF files, through :class:`jaxfold.data.templates.TemplateFeaturizer`;
without an mmCIF folder the template features are empty (zero templates), as AlphaFold's
when its template search finds nothing.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import logging
import multiprocessing
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxfold.common.files import PathLike
from jaxfold.data import parsers
from jaxfold.data.msa_features import make_msa_features, make_sequence_features
from jaxfold.data.parsers import FastaRecord

logger = logging.getLogger(__name__)

FeatureDict = dict[str, np.ndarray]

__all__ = [
    "MAX_TEMPLATE_HITS",
    "PipelineError",
    "PreprocessResult",
    "TEMPLATE_HIT_FILES",
    "build_raw_features",
    "find_template_hits",
    "preprocess_many",
    "read_template_hits",
    "template_features",
]

# AlphaFold's run_alphafold.py: MAX_TEMPLATE_HITS = 20 (the featurizer's limit; the model
# then keeps data.eval.max_templates of them).
MAX_TEMPLATE_HITS = 20

# Template-hit files looked for in a sequence's alignment folder, in this order
# (AlphaFold writes pdb_hits.hhr / pdb_hits.sto; OpenFold's test data hmm_output.sto;
# RoseTTAFold and HHsearch runs other *.hhr names).
TEMPLATE_HIT_FILES = ("pdb_hits.hhr", "pdb_hits.sto", "hmm_output.sto", "pdb70_hits.hhr", "hhsearch_output.hhr")


class PipelineError(ValueError):
    """Bad input to the data pipeline (the message names the sequence and the problem)."""


# ---------------------------------------------------------------------------------------
# Templates (a thin adapter over jaxfold.data.templates).
# ---------------------------------------------------------------------------------------


def _empty_template_features(num_res: int) -> FeatureDict:
    from jaxfold.data import templates  # noqa: PLC0415  (templates pulls in Biopython)

    return dict(templates.empty_template_features(num_res))


def find_template_hits(record: FastaRecord, where: PathLike) -> Path | None:
    """The template-hit file of ``record`` in ``where``.

    ``where`` may be the file itself, a folder holding the record's hit file, or a folder
    of per-sequence folders ``<where>/<name>/`` (the alignment-directory layout). Returns
    None when nothing is found in a folder.
    """
    where = Path(where)
    if where.is_file():
        return where
    if not where.is_dir():
        raise PipelineError(f"{record.name}: template hits not found: {where}")
    folders = [where / record.name, where / record.safe_name, where]
    for folder in folders:
        if not folder.is_dir():
            continue
        for name in TEMPLATE_HIT_FILES:
            if (folder / name).is_file():
                return folder / name
        for pattern in (f"{record.name}.hhr", f"{record.safe_name}.hhr", f"{record.safe_name}.sto"):
            if (folder / pattern).is_file():
                return folder / pattern
    return None


def read_template_hits(path: PathLike, query_sequence: str) -> list[parsers.TemplateHit]:
    """Parses an HHsearch ``.hhr`` or hmmsearch Stockholm ``.sto`` hit list."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise PipelineError(f"cannot read template hits {path}: {e.strerror or e}") from None
    if path.suffix == ".hhr":
        return parsers.parse_hhr(text, source=str(path))
    if path.suffix == ".sto":
        return parsers.parse_hmmsearch_sto(text, query_sequence, source=str(path))
    raise PipelineError(f"{path}: unknown template-hit format (expected .hhr from HHsearch or .sto from hmmsearch)")


def template_features(
    record: FastaRecord,
    *,
    hits_path: PathLike | None = None,
    mmcif_dir: PathLike | None = None,
    max_template_date: None | str | datetime.date = None,
    msa_dir: PathLike | None = None,
    max_hits: int = MAX_TEMPLATE_HITS,
    info: dict[str, Any] | None = None,
) -> FeatureDict:
    """Template features of ``record`` (AlphaFold's ``templates_result.features``).

    Without ``mmcif_dir`` there are no templates (``T = 0``). With it, hits are read from
    ``hits_path`` (file or folder, see :func:`find_template_hits`), else from the
    record's folder in ``msa_dir``. ``max_template_date`` defaults to today (no cut-off).
    ``info`` (optional) receives ``template_hits_file``, ``templates`` (names used) and the
    featurizer's ``template_errors`` / ``template_warnings``.
    """
    info = {} if info is None else info
    num_res = len(record.sequence)
    if mmcif_dir is None:
        if hits_path is not None:
            raise PipelineError(
                f"{record.name}: template hits were given but no mmCIF folder "
                "(--template-mmcif-dir) to read the template structures from"
            )
        info["templates"] = []
        return _empty_template_features(num_res)
    mmcif_dir = Path(mmcif_dir)
    if not mmcif_dir.is_dir():
        raise PipelineError(f"template mmCIF folder not found: {mmcif_dir}")
    path = None
    if hits_path is not None:
        path = find_template_hits(record, hits_path)
        if path is None:
            raise PipelineError(
                f"{record.name}: no template-hit file in {hits_path} (looked for "
                f"{', '.join(TEMPLATE_HIT_FILES)} and <name>.hhr)"
            )
    elif msa_dir is not None and Path(msa_dir).is_dir():
        path = find_template_hits(record, msa_dir)
    info["template_hits_file"] = str(path) if path else None
    if path is None:
        logger.info("%s: no template hits found; predicting without templates.", record.name)
        info["templates"] = []
        return _empty_template_features(num_res)

    hits = read_template_hits(path, record.sequence)
    if max_template_date is None:
        max_template_date = datetime.date.today()
    from jaxfold.data import templates  # noqa: PLC0415

    try:
        featurizer = templates.TemplateFeaturizer(mmcif_dir, max_template_date, max_hits=max_hits)
    except ValueError as e:
        raise PipelineError(f"templates: {e}") from None
    result = featurizer.get_templates(record.sequence, hits)
    features = dict(result.features if hasattr(result, "features") else result)
    info["templates"] = [
        n.decode() if isinstance(n, bytes) else str(n) for n in features.get("template_domain_names", [])
    ]
    info["template_errors"] = list(getattr(result, "errors", []))
    info["template_warnings"] = list(getattr(result, "warnings", []))
    # Every unused hit grouped under its reason (the featurizer logs one summary line per search, not one
    # line per missing or unreadable mmCIF); inference writes it into ranking.json.
    info["templates_skipped"] = dict(getattr(result, "skipped_by_reason", {}) or {})
    return features


# ---------------------------------------------------------------------------------------
# One sequence.
# ---------------------------------------------------------------------------------------


def _as_record(record: FastaRecord | str) -> FastaRecord:
    if isinstance(record, FastaRecord):
        sequence = record.sequence.upper()
        bad = sorted(set(sequence) - parsers.QUERY_ALPHABET)
        if bad:
            raise PipelineError(
                f"{record.name}: illegal residue letter(s) {''.join(bad)!r}; "
                "allowed are the 20 standard amino acids, X and B/Z/U/O"
            )
        if not sequence:
            raise PipelineError(f"{record.name}: empty sequence")
        return record
    if isinstance(record, str):
        return parsers.parse_fasta(f">query\n{record}\n", source="<sequence>")[0]
    raise TypeError(f"expected a FastaRecord or a sequence string, got {type(record).__name__}")


def _split_databases(databases: Mapping[str, Any] | None):
    """``{name: path(s)}`` -> (jackhmmer FASTA databases, HH-suite database prefixes)."""
    fasta, hhsuite = {}, []
    for name, spec in (databases or {}).items():
        paths = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
        files = []
        for p in paths:
            p = Path(p)
            if p.is_file():
                files.append(p)
            elif any(Path(f"{p}{suffix}").is_file() for suffix in ("_a3m.ffdata", "_hhm.ffdata", "_cs219.ffdata")):
                hhsuite.append(p)
            else:
                raise PipelineError(
                    f"database {name!r}: {p} not found (expected a FASTA file, "
                    "or an HH-suite database prefix with <prefix>_a3m.ffdata)"
                )
        if files:
            fasta[name] = files if len(files) > 1 else files[0]
    return fasta, hhsuite


def build_raw_features(
    record: FastaRecord | str,
    msa_mode: str = "single_sequence",
    msa_dir: PathLike | None = None,
    databases: Mapping[str, Any] | None = None,
    template_hits_path: PathLike | None = None,
    template_mmcif_dir: PathLike | None = None,
    max_template_date: None | str | datetime.date = None,
    output_dir: PathLike | None = None,
    *,
    cpus: int = 1,
    timings: dict[str, float] | None = None,
    info: dict[str, Any] | None = None,
) -> FeatureDict:
    """Raw features of one chain, as AlphaFold's ``DataPipeline.process`` returns them.

    Args:
      record: a :class:`FastaRecord` (or a bare sequence string, named ``query``).
      msa_mode: ``precomputed`` (read ``msa_dir/<name>/``), ``search`` (jackhmmer over
        ``databases``) or ``single_sequence``.
      msa_dir: folder of per-sequence alignment folders (precomputed mode).
      databases: ``{name: FASTA path or list of paths}`` for jackhmmer; a value that is an
        HH-suite prefix (``<prefix>_a3m.ffdata`` exists) goes to HHblits.
      template_hits_path: ``.hhr`` / ``.sto`` hit file or folder (see
        :func:`find_template_hits`); default: look in the record's alignment folder.
      template_mmcif_dir: folder of ``<pdb_id>.cif``; without it, zero templates.
      max_template_date: ``YYYY-MM-DD`` cut-off for template release dates (default today).
      output_dir: (search mode) alignments are written to ``output_dir/<name>/``.
      cpus: threads for jackhmmer.
      timings: optional dict receiving ``msa`` and ``templates`` seconds.
      info: optional dict receiving ``msa_depth`` per database, ``num_alignments`` and the
        template information of :func:`template_features`.

    Raises:
      PipelineError: a bad sequence or set-up (names the sequence and the problem);
      jaxfold.data.msa_search.MsaSearchError / parsers.ParseError: unreadable alignments.
    """
    from jaxfold.data import msa_search  # noqa: PLC0415

    record = _as_record(record)
    timings = {} if timings is None else timings
    info = {} if info is None else info
    if msa_mode not in msa_search.MODES:
        raise PipelineError(f"unknown MSA mode {msa_mode!r}; expected one of {', '.join(msa_search.MODES)}")
    start = time.perf_counter()
    if msa_mode == "precomputed":
        if msa_dir is None:
            raise PipelineError('MSA mode "precomputed" needs an alignment folder (--msa-dir)')
        if not Path(msa_dir).is_dir():
            raise PipelineError(f"MSA folder not found: {msa_dir}")
        msas = msa_search.get_msas(record, "precomputed", msa_dir=msa_dir)
    elif msa_mode == "search":
        fasta_dbs, hhsuite_dbs = _split_databases(databases)
        if not fasta_dbs and not hhsuite_dbs:
            raise PipelineError('MSA mode "search" needs at least one database (--database uniref90=PATH.fasta)')
        msas = msa_search.get_msas(
            record,
            "search",
            databases=fasta_dbs,
            hhblits_databases=hhsuite_dbs or None,
            output_dir=output_dir,
            cpus=cpus,
        )
    else:
        msas = msa_search.get_msas(record, "single_sequence")
    sequence_features = make_sequence_features(record.sequence, record.description, len(record.sequence))
    msa_features = make_msa_features(msas)
    if msa_features["msa"].shape[1] != len(record.sequence):
        raise PipelineError(
            f"{record.name}: the alignments have {msa_features['msa'].shape[1]} "
            f"columns but the sequence {len(record.sequence)} residues"
        )
    timings["msa"] = time.perf_counter() - start
    info["msa_depth"] = {name: len(msa) for name, msa in msas.items()}
    info["num_alignments"] = int(msa_features["msa"].shape[0])

    start = time.perf_counter()
    seq_msa_dir = None
    if msa_mode == "precomputed":
        seq_msa_dir = msa_dir
    elif msa_mode == "search" and output_dir is not None:
        seq_msa_dir = output_dir
    template = template_features(
        record,
        hits_path=template_hits_path,
        mmcif_dir=template_mmcif_dir,
        max_template_date=max_template_date,
        msa_dir=seq_msa_dir,
        info=info,
    )
    timings["templates"] = time.perf_counter() - start
    logger.info(
        "%s: %d residues, %d MSA rows (%s), %d templates",
        record.name,
        len(record.sequence),
        info["num_alignments"],
        ", ".join(f"{k} {v}" for k, v in info["msa_depth"].items()),
        len(info.get("templates", [])),
    )
    return {**sequence_features, **msa_features, **template}


# ---------------------------------------------------------------------------------------
# Many sequences, in parallel.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class PreprocessResult:
    """The outcome of :func:`build_raw_features` for one record.

    ``features`` is None and ``error`` holds a one-line message when it failed.
    ``timings`` holds ``msa`` / ``templates`` / ``preprocess`` seconds (wall time in the worker).
    """

    index: int
    record: FastaRecord
    features: FeatureDict | None = None
    error: str | None = None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


def _error_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    if isinstance(e, FileNotFoundError) and e.filename and str(e.filename) not in text:
        text = f"{text}: {e.filename}"
    return text


def _preprocess_one(index: int, record: FastaRecord, kwargs: Mapping[str, Any]) -> PreprocessResult:
    """Worker body: never raises for bad input, returns the error instead."""
    timings: dict[str, float] = {}
    info: dict[str, Any] = {}
    start = time.perf_counter()
    try:
        features = build_raw_features(record, timings=timings, info=info, **kwargs)
        error = None
    except (ValueError, OSError, RuntimeError, KeyError) as e:
        features, error = None, _error_line(e)
        if not error.startswith(record.name):
            error = f"{record.name}: {error}"
    timings["preprocess"] = time.perf_counter() - start
    return PreprocessResult(index=index, record=record, features=features, error=error, timings=timings, info=info)


def _ray_results(items, kwargs, workers) -> Iterator[PreprocessResult]:
    try:
        import ray  # noqa: PLC0415
    except ImportError:
        raise PipelineError(
            "use_ray=True (--ray) needs the 'ray' package, which is not "
            'installed: pip install "ray[default]", or drop --ray to use the '
            "built-in process pool"
        ) from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1)(_preprocess_one)
        pending = [remote.remote(i, r, dict(kwargs)) for i, r in items]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                yield ray.get(ref)
    finally:
        if started_here:
            ray.shutdown()


def preprocess_many(
    records: Iterable[FastaRecord],
    *,
    workers: int = 1,
    use_ray: bool = False,
    mp_context: str | None = "spawn",
    **kwargs,
) -> Iterator[PreprocessResult]:
    """Runs :func:`build_raw_features` for every record; yields results as they complete.

    Args:
      records: the sequences.
      workers: parallel worker processes; ``<= 1`` runs in this process, in order.
      use_ray: run the workers as Ray tasks (``ray`` is imported only then; a clear
        :class:`PipelineError` says so when it is not installed).
      mp_context: start method of the process pool (``spawn`` by default: the parent may
        have started JAX's threads, which ``fork`` does not survive).
      **kwargs: passed to :func:`build_raw_features` (``msa_mode``, ``msa_dir``,
        ``databases``, ``template_hits_path``, ``template_mmcif_dir``,
        ``max_template_date``, ``output_dir``, ``cpus``).

    Yields:
      :class:`PreprocessResult`, in completion order (``result.index`` is the record's
      position in ``records``). A failing record yields a result with ``error`` set; the
      others go on.
    """
    items = list(enumerate(records))
    if not items:
        return
    if use_ray:
        yield from _ray_results(items, kwargs, max(1, workers))
        return
    if workers <= 1 or len(items) == 1:
        for index, record in items:
            yield _preprocess_one(index, record, kwargs)
        return
    context = multiprocessing.get_context(mp_context) if mp_context else None
    with concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=context) as pool:
        futures = {pool.submit(_preprocess_one, index, record, kwargs): (index, record) for index, record in items}
        try:
            for future in concurrent.futures.as_completed(futures):
                index, record = futures[future]
                try:
                    yield future.result()
                except Exception as e:  # a worker crashed (e.g. killed): report, go on
                    yield PreprocessResult(
                        index=index,
                        record=record,
                        error=f"{record.name}: preprocessing worker failed: {_error_line(e)}",
                    )
        finally:
            for future in futures:
                future.cancel()
