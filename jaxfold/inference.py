"""Inference: FASTA records -> features -> the one prediction path -> files.

The library half of ``infer.py``:

* :func:`predict` runs the model on a FASTA record, raw pipeline features or processed features
  through :func:`jaxfold.model.predict.predict` (recycling on device, chunking, kernels, mesh),
  with progress and timings.
* :func:`run_inference`: the whole command: preprocessing in parallel, every model on every record,
  one failing record reported and the others still predicted, files written by
  :mod:`jaxfold.outputs`; parameters come from :mod:`jaxfold.model_params`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxfold.common import residue_constants as rc
from jaxfold.common.files import PathLike
from jaxfold.data.buckets import bucket_length, pad_features, unpad_outputs
from jaxfold.data.feature_processing import is_processed
from jaxfold.data.parsers import FastaRecord
from jaxfold.errors import InferenceError, OutputExistsError
from jaxfold.model_params import load_model_params
from jaxfold.outputs import (
    check_not_finished,
    ranking_summary,
    relax_models,
    sequence_output_dir,
    write_model_outputs,
    write_sequence_summary,
)
from jaxfold.progress import NO_PROGRESS, Progress

__all__ = [
    "InferenceError",
    "OutputExistsError",
    "ModelSpec",
    "SequenceReport",
    "build_config",
    "load_records",
    "predict",
    "run_inference",
    "trim_msa_rows",
]


# ---------------------------------------------------------------------------------------
# Prediction.
# ---------------------------------------------------------------------------------------


_MSA_ROW_FEATURES = ("msa_feat", "msa_mask", "bert_mask", "true_msa", "msa_row_mask")
_EXTRA_ROW_FEATURES = (
    "extra_msa",
    "extra_msa_mask",
    "extra_has_deletion",
    "extra_deletion_value",
    "extra_msa_row_mask",
)


def trim_msa_rows(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drops trailing MSA / extra-MSA rows that are padding in every recycling slice.

    Padding rows have ``msa_row_mask`` (``extra_msa_row_mask``) 0 and are masked everywhere in the
    model (attention keys, outer-product mean, column-global attention), so valid positions are
    unchanged (up to float rounding). At least one row of each is kept.
    """
    out = dict(batch)
    for row_mask_key, keys in (("msa_row_mask", _MSA_ROW_FEATURES), ("extra_msa_row_mask", _EXTRA_ROW_FEATURES)):
        if row_mask_key not in out:
            continue
        valid = np.asarray(out[row_mask_key]).reshape(-1, np.shape(out[row_mask_key])[-1]) > 0
        rows = valid.any(axis=0)
        keep = max(1, int(np.nonzero(rows)[0].max()) + 1 if rows.any() else 1)
        for key in keys:
            if key in out and np.ndim(out[key]) >= 2:
                out[key] = out[key][:, :keep]
    return out


def bucket_msa_rows(batch_full: Mapping[str, np.ndarray], batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The MSA and extra-MSA rows of ``batch`` (trimmed of padding rows) rounded up to a power of two, at
    most the untrimmed batch's rows, by taking those rows from ``batch_full``: the extra rows are
    AlphaFold's own padding rows (masked), so the prediction is unchanged and records of similar MSA depth
    share shapes."""
    out = dict(batch)
    for row_mask_key, keys in (("msa_row_mask", _MSA_ROW_FEATURES), ("extra_msa_row_mask", _EXTRA_ROW_FEATURES)):
        present = [k for k in keys if k in out and np.ndim(out[k]) >= 2]
        if not present:
            continue
        rows, available = out[present[0]].shape[1], batch_full[present[0]].shape[1]
        target = min(max(16, 1 << (rows - 1).bit_length()), available)
        for key in present:
            out[key] = batch_full[key][:, :target]
    return out


def predict(
    features_or_record: Mapping[str, Any] | FastaRecord | str,
    config,
    params: Mapping,
    *,
    seed: int = 0,
    pipeline_options: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    timings: dict[str, float] | None = None,
    label: str = "",
    trim_msa_padding: bool = True,
    mesh=None,
    kernels: str | None = None,
    chunk_size: int | str | None = None,
    outputs: str = "full",
    bucket: str = "none",
    run_settings: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Predicts a structure: record / raw features / processed features -> model outputs.

    Args:
      features_or_record: a :class:`FastaRecord` or sequence string (run through
        :func:`jaxfold.data.pipeline.build_raw_features` with ``pipeline_options``; default
        single-sequence MSA), raw pipeline features, or processed features (with the leading
        recycling axis, as :func:`jaxfold.data.feature_processing.process_features` returns).
      config: ``jaxfold.config.model_config(...)``.
      params: the parameter tree (``load_alphafold_params`` / ``init_random_params``).
      seed: seed of the feature processing (MSA sampling and masking).
      progress: optional :class:`Progress` (stages: features, compile, each recycle).
      timings: optional dict receiving ``preprocess`` (records only), ``process_features``,
        ``compile`` (0 when cached), ``recycle_<i>`` and ``predict`` seconds.
      mesh, kernels, chunk_size, outputs: as :func:`jaxfold.model.predict.predict` (the one
        prediction path this calls): DAP mesh, ``auto``/``xla``/``pallas``, ``auto``/int,
        ``full``/``lean``.
      bucket: ``'auto'`` pads the chain to its length bucket (:mod:`jaxfold.data.buckets`) and the MSA
        rows to a power of two, so records of similar size share a compiled program; the outputs are
        cut back to the true residues (the same prediction to round-off). ``'none'``: exact shapes.
      run_settings: optional dict receiving the resolved settings (kernels, chunk size, dtype,
        DAP size, estimated peak and free device memory).
      label: prefix of the progress stage names.
      trim_msa_padding: drop the all-padding MSA and extra-MSA rows that AlphaFold's fixed-size
        batch carries (:func:`trim_msa_rows`): the same prediction, far less work when the
        alignment is shallower than ``max_msa_clusters`` / ``max_extra_msa`` (the padded batch
        of a 38-residue protein with a 31-row MSA is 508 + 5120 rows). Only the shapes of
        ``masked_msa/logits`` and ``representations/msa`` change (fewer rows).

    Returns:
      The outputs of :func:`jaxfold.model.run_alphafold`: flat keys
      (``structure_module/final_atom_positions``, ``confidence/plddt``, ...), NumPy arrays,
      plus ``features/aatype``, ``features/residue_index`` and ``features/seq_mask`` (first
      recycling slice) for the writers.
    """
    from jaxfold.data.feature_processing import process_features  # noqa: PLC0415
    from jaxfold.model.memory import ChainTooLongError  # noqa: PLC0415
    from jaxfold.model.predict import number_of_passes  # noqa: PLC0415
    from jaxfold.model.predict import predict as run_model

    progress = progress or NO_PROGRESS
    timings = {} if timings is None else timings
    prefix = f"{label} " if label else ""
    features = features_or_record
    if isinstance(features, (FastaRecord, str)):
        from jaxfold.data.pipeline import build_raw_features  # noqa: PLC0415

        progress.stage(f"{prefix}preprocessing")
        start = time.perf_counter()
        features = build_raw_features(features, **dict(pipeline_options or {}))
        timings["preprocess"] = time.perf_counter() - start
    if not is_processed(features):
        progress.stage(f"{prefix}processing features")
        start = time.perf_counter()
        features = process_features(features, config, seed=seed)
        timings["process_features"] = time.perf_counter() - start

    batch_full = {k: np.asarray(v) for k, v in features.items() if np.asarray(v).dtype.kind in "biuf"}
    batch_all = trim_msa_rows(batch_full) if trim_msa_padding else batch_full
    num_res = batch_all["aatype"].shape[1]
    if bucket != "none":  # shapes shared by many records: one compiled program per bucket
        batch_all = bucket_msa_rows(batch_full, batch_all)
        length = bucket_length(num_res, bucket)
        if length > num_res:
            batch_all = pad_features(batch_all, length)
    num_passes = number_of_passes(config, batch_all)

    def pass_stage(index: int) -> str:
        return (
            f"{prefix}recycle {index}/{num_passes - 1}"
            if index + 1 < num_passes
            else f"{prefix}final pass ({num_passes - 1} recycles)"
        )

    def on_compiled(seconds):
        progress.advance()
        progress.stage(pass_stage(0))

    def on_pass(index, total, seconds):
        timings[f"recycle_{index}"] = seconds
        progress.advance()
        if index + 1 < total:
            progress.stage(pass_stage(index + 1))

    progress.stage(f"{prefix}compiling")
    run_timings: dict[str, Any] = {}
    try:
        flat = run_model(
            config,
            params,
            batch_all,
            mesh=mesh,
            kernels=kernels,
            chunk_size=chunk_size,
            outputs=outputs,
            timings=run_timings,
            on_compiled=on_compiled,
            on_pass=on_pass,
        )
    except ChainTooLongError as e:
        raise InferenceError(str(e)) from None
    timings["compile"] = run_timings["compile"]
    timings["predict"] = run_timings["predict"]
    if run_settings is not None:
        run_settings.update(dataclasses.asdict(run_timings["settings"]))
    if batch_all["aatype"].shape[1] > num_res:  # cut the bucket's padding off, confidences of the true residues
        flat = unpad_outputs(flat, num_res)
    flat["features/aatype"] = batch_all["aatype"][0, :num_res]
    flat["features/residue_index"] = batch_all["residue_index"][0, :num_res]
    flat["features/seq_mask"] = batch_all["seq_mask"][0, :num_res]
    if not np.all(np.isfinite(flat["structure_module/final_atom_positions"])):
        raise InferenceError(
            "the model produced non-finite coordinates (NaN/inf): check the "
            "parameters and the precision (--precision fp32)"
        )
    return flat


# ---------------------------------------------------------------------------------------
# The whole run (infer.py).
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class ModelSpec:
    """One model to run: preset name, config, and (lazily) its parameters."""

    name: str
    config: Any
    params: dict | None = None
    random: bool = False
    path: Path | None = None


@dataclasses.dataclass
class SequenceReport:
    name: str
    output_dir: Path | None = None
    error: str | None = None
    ranking: dict[str, Any] | None = None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    files: list[Path] = dataclasses.field(default_factory=list)


def build_config(
    preset: str, *, num_recycle: int | None = None, precision: str = "fp32", overrides: Mapping[str, Any] | None = None
):
    """``model_config(preset, ...)`` with the command line's overrides."""
    from jaxfold.config import model_config  # noqa: PLC0415

    kwargs = {k: v for k, v in dict(overrides or {}).items() if v is not None}
    if num_recycle is not None:
        kwargs["num_recycle"] = int(num_recycle)
    if precision not in ("fp32", "bf16"):
        raise InferenceError(f"unknown precision {precision!r} (fp32 or bf16)")
    if precision == "bf16":
        kwargs["dtype"] = "bfloat16"
    try:
        return model_config(preset, **kwargs)
    except (ValueError, KeyError, TypeError) as e:
        raise InferenceError(f"model {preset!r}: {str(e).strip(chr(34) + chr(39))}") from None


def load_parameters(
    models: Sequence[ModelSpec], params: str | None, seed: int, progress: Progress, log: Callable[[str], None]
) -> None:
    """Loads (or draws, ``params='random'``) the parameters of every model that has none yet into
    ``spec.params`` (on the device: once, not per prediction), with ``spec.random`` and ``spec.path``; one
    progress step per model. Runs before any work, so that a bad file fails first."""
    import jax  # noqa: PLC0415

    for spec in models:
        if spec.params is None:
            progress.stage(f"loading parameters {spec.name}")
            start = time.perf_counter()
            spec.params, spec.random, spec.path = load_model_params(params, spec.name, spec.config, seed)
            spec.params = jax.device_put(spec.params)
            log(
                f"{spec.name}: {'random parameters' if spec.random else spec.path} "
                f"({time.perf_counter() - start:.1f} s)"
            )
        progress.advance()


def relax_ranked(
    report: SequenceReport,
    extra: dict[str, Any],
    timings: dict[str, float],
    results: Mapping[str, Mapping[str, np.ndarray]],
    relax: str,
    relax_device: str,
    random_params: bool,
    progress: Progress,
    log: Callable[[str], None],
    chain_ids: Sequence[str] | None = None,
) -> None:
    """Unless ``relax`` is ``none``: Amber-relaxes the best or every model of ``results`` by rank
    (:func:`jaxfold.outputs.relax_models`, files in ``report.output_dir``) and records it: the files in
    ``report.files``, the relaxations' numbers as ``extra['relax']``, the seconds as ``timings['relax_<model>']``."""
    if relax == "none":
        return
    progress.stage(f"{report.name} relaxing")
    files, relax_stats, relax_seconds = relax_models(
        report.output_dir,
        report.name,
        results,
        ranking_summary(results)["order"],
        relax,
        relax_device,
        random_params,
        chain_ids=chain_ids,
        log=log,
    )
    report.files += files
    extra["relax"] = relax_stats
    timings.update({f"relax_{model}": t for model, t in relax_seconds.items()})


def run_inference(
    records: Sequence[FastaRecord],
    models: Sequence[ModelSpec],
    output_dir: PathLike,
    *,
    pipeline_options: Mapping[str, Any],
    params: str | None,
    seed: int = 0,
    workers: int = 1,
    use_ray: bool = False,
    overwrite: bool = False,
    plots: bool = True,
    progress: Progress | None = None,
    trim_msa_padding: bool = True,
    mesh=None,
    kernels: str = "auto",
    chunk_size: int | str = "auto",
    bucket: str = "auto",
    relax: str = "none",
    relax_device: str = "cpu",
    reraise: bool = False,
    log: Callable[[str], None] = lambda s: None,
) -> list[SequenceReport]:
    """Preprocesses ``records`` in parallel and, as each is ready, runs every model on it and
    writes its files into ``output_dir/<name>/``. Returns one report per record (``error`` set
    for the ones that failed); raises :class:`InferenceError` for set-up problems found before
    any work (finished outputs in the way, bad parameters). ``mesh``, ``kernels`` and
    ``chunk_size`` go to :func:`jaxfold.model.predict.predict`, which runs with lean outputs
    (what the writers need: no N x N x 64 logits on the host). ``bucket`` pads each record to its
    length bucket (one compiled program per bucket); ``relax`` (``none``/``best``/``all``) Amber-relaxes
    the best or every model on ``relax_device``. A record that fails in any way
    (an out-of-memory included) is reported and the next one is tried; ``reraise`` re-raises
    unexpected errors instead (``--debug``)."""
    from jaxfold.data.pipeline import preprocess_many  # noqa: PLC0415

    progress = progress or NO_PROGRESS
    output_dir = Path(output_dir)
    # Refuse before any work: finished predictions in the way.
    for record in records:
        check_not_finished(sequence_output_dir(output_dir, record), overwrite)
    num_steps_per_model = 0
    for spec in models:
        num_steps_per_model += 1 + 1 + (spec.config.model.num_recycle + 1) + 1
    progress.add(len(records) * (1 + num_steps_per_model + 1) + len(models))

    load_parameters(models, params, seed, progress, log)

    reports: dict[int, SequenceReport] = {}
    compiles = 0
    progress.stage(f"preprocessing {len(records)} sequence(s)")
    for result in preprocess_many(records, workers=workers, use_ray=use_ray, **pipeline_options):
        record = result.record
        name = record.safe_name
        seq_dir = sequence_output_dir(output_dir, record)
        report = SequenceReport(name=name, output_dir=seq_dir)
        reports[result.index] = report
        progress.advance()
        if not result.ok:
            report.error = result.error
            progress.write(f"error: {result.error}")
            progress.advance(num_steps_per_model + 1)
            continue
        unknown = unknown_residues(record.sequence)
        if unknown:
            log(f"{name}: {unknown}")
        timings: dict[str, float] = {
            "features": result.timings.get("preprocess", 0.0),
            "msa": result.timings.get("msa", 0.0),
            "templates": result.timings.get("templates", 0.0),
        }
        results: dict[str, dict[str, np.ndarray]] = {}
        random_params = any(spec.random for spec in models)
        try:
            for spec in models:
                model_timings: dict[str, float] = {}
                settings: dict[str, Any] = {}
                outputs = predict(
                    result.features,
                    spec.config,
                    spec.params,
                    seed=seed,
                    progress=progress,
                    timings=model_timings,
                    label=f"{name} {spec.name}",
                    trim_msa_padding=trim_msa_padding,
                    mesh=mesh,
                    kernels=kernels,
                    chunk_size=chunk_size,
                    outputs="lean",
                    bucket=bucket,
                    run_settings=settings,
                )
                compiles += model_timings.get("compile", 0.0) > 0
                log(
                    f"{name} {spec.name}: kernels {settings['kernels']}, chunk size "
                    f"{settings['chunk_size'] or 'none'}, {settings['dtype']}"
                    + (f", DAP over {settings['dap_size']} devices" if settings["dap_size"] > 1 else "")
                    + f", estimated peak {settings['estimated_peak_bytes'] / 2**30:.1f} GiB of "
                    f"{settings['budget_bytes'] / 2**30:.1f} GiB free"
                )
                progress.advance()  # process_features
                for key, value in model_timings.items():
                    timings[f"{key}_{spec.name}"] = value
                progress.stage(f"{name} {spec.name} writing")
                start = time.perf_counter()
                report.files += write_model_outputs(seq_dir, name, spec.name, outputs, random_params=spec.random)
                timings[f"write_{spec.name}"] = time.perf_counter() - start
                progress.advance()
                results[spec.name] = outputs
                log(
                    f"{name} {spec.name}: mean pLDDT {float(np.mean(outputs['confidence/plddt'])):.2f}"
                    + (f", pTM {float(outputs['confidence/ptm']):.3f}" if "confidence/ptm" in outputs else "")
                    + f" (compile {model_timings.get('compile', 0):.1f} s, "
                    f"predict {model_timings.get('predict', 0):.1f} s)"
                )
            extra = {
                "info": {
                    "num_alignments": result.info.get("num_alignments"),
                    "msa_depth": result.info.get("msa_depth"),
                    "templates": result.info.get("templates", []),
                    "templates_skipped": result.info.get("templates_skipped", {}),
                }
            }
            relax_ranked(report, extra, timings, results, relax, relax_device, random_params, progress, log)
            progress.stage(f"{name} writing summary")
            start = time.perf_counter()
            timings["total"] = sum(
                v
                for k, v in timings.items()
                if k in ("features",) or k.startswith(("process_features_", "compile_", "predict_", "write_", "relax_"))
            )
            files = write_sequence_summary(
                seq_dir, name, results, timings, random_params=random_params, plots=plots, extra=extra
            )
            timings["write_summary"] = time.perf_counter() - start
            report.files += files
            report.ranking = ranking_summary(results)
            report.timings = timings
            progress.advance()
        except InferenceError as e:
            report.error = f"{name}: {e}"
            progress.write(f"error: {report.error}")
        except Exception as e:  # noqa: BLE001  (one failing record must not end the run; KeyboardInterrupt does)
            if reraise:
                raise
            report.error = f"{name}: {failure_reason(e, record)}"
            progress.write(f"error: {report.error}")
    done = [r for r in reports.values() if r.timings]
    if done:
        per_record = ", ".join(f"{r.name} {r.timings.get('total', 0):.1f} s" for r in done)
        log(
            f"{compiles} compiled program(s) for {len(done)} record(s) x {len(models)} model(s) "
            f"(length buckets: {bucket}); {per_record}"
        )
    progress.stage("done")
    progress.close()
    return [reports[i] for i in sorted(reports)]


def failure_reason(error: Exception, record: FastaRecord) -> str:
    """One line for an unexpected failure of one record: an out-of-memory says so and what would help."""
    text = f"{type(error).__name__}: {error}"
    if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
        reason = (
            f"out of device memory ({len(record.sequence)} residues): try --precision bf16, a smaller "
            "--chunk-size, fewer MSA rows, or more GPUs with --mesh DAPx1"
        )
        if os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "").lower() in ("false", "0"):
            # Measured: fp32 8,000 residues on an H100 compiled to 68.9 GiB of 75.2, ran with preallocation and
            # failed without it, its 37 GiB of temporaries not found in one piece by the growing allocator.
            reason += (
                "; XLA_PYTHON_CLIENT_PREALLOCATE=false is set: JAX's allocator then grows region by region and "
                "may not find one block for a long chain's temporaries; unset it to let JAX take its memory at start"
            )
        return reason
    return f"unexpected {text.splitlines()[0][:300]} (rerun with --debug for the traceback)"


def unknown_residues(sequence: str) -> str:
    """A note for residues without atoms in the output (X and other non-standard letters), or ''."""
    positions = [i + 1 for i, aa in enumerate(sequence) if aa not in rc.restypes]
    if not positions:
        return ""
    shown = ", ".join(f"{sequence[p - 1]}{p}" for p in positions[:10]) + (", ..." if len(positions) > 10 else "")
    return (
        f"{len(positions)} non-standard residue(s) ({shown}) are modelled as unknown: they get no atoms "
        "in the structure files"
    )


def load_records(
    fasta_paths: Iterable[PathLike], reader: Callable | None = None, name_of: Callable = lambda record: record.safe_name
) -> list:
    """Reads every FASTA file with ``reader`` (default: one chain per record; complexes pass their own
    reader and naming); duplicate names are an error (their outputs would collide)."""
    from jaxfold.data.parsers import ParseError, read_fasta  # noqa: PLC0415

    reader = reader or read_fasta
    records: list = []
    seen: dict[str, str] = {}
    for path in fasta_paths:
        try:
            file_records = reader(path)
        except ParseError as e:
            raise InferenceError(f"malformed FASTA: {e}") from None
        except (FileNotFoundError, IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
            text = str(e) if isinstance(e, FileNotFoundError) else f"{path}: {e}"
            raise InferenceError(f"cannot read FASTA: {text}") from None
        for record in file_records:
            name = name_of(record)
            if name in seen:
                raise InferenceError(
                    f"two sequences named {name!r} ({seen[name]} and {path}): their outputs would share one "
                    "folder; rename one of them"
                )
            seen[name] = str(path)
            records.append(record)
    return records
