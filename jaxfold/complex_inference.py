"""Complexes from FASTA to files: AlphaFold-Multimer runs of ``infer.py``.

A FASTA record whose sequence holds ``:`` is a complex (ColabFold's convention, see
:mod:`jaxfold.data.complex_fasta`): ``>name`` then ``CHAIN_A:CHAIN_B:...``, chain IDs ``A``, ``B``, ...
in FASTA order, homomers by repeating the sequence. :func:`run_complexes` mirrors
:func:`jaxfold.inference.run_inference` for them:

* parameters of every model are loaded (or drawn, ``--params random``) before any work;
* per complex: :func:`jaxfold.data.multimer_pipeline.complex_features` from each chain's alignment
  folder (:func:`find_chain_msa_dirs`), then every model through :func:`jaxfold.model.predict.predict`;
  a complex that fails is reported and the next one is tried;
* files (:mod:`jaxfold.outputs` writers) into ``output_dir/<name>/``: per model a PDB and an mmCIF with
  one chain per FASTA chain (IDs as in the FASTA, residues numbered from 1 per chain, pLDDT as
  B-factors) and the PAE json of the whole complex; plots; ``timings.json``; ``ranking.json`` last.

AlphaFold-Multimer regroups the chains by entity (all copies of the first sequence, then the next, ...),
so for ``A=x, B=y, C=x`` the model's residue order is A, C, B. Every per-residue output is put back into
FASTA order (A, B, C) before writing: structures, pLDDT, PAE rows and columns all follow the FASTA.

``ranking.json``: AlphaFold-Multimer's ``ranking_debug.json`` keys (``iptm+ptm``: model -> ranking
confidence ``0.8 ipTM + 0.2 pTM``, ``order``: best first) plus ``iptm``, ``ptm``, ``chains`` (FASTA
letter, length, entity and copy of each chain) and ``per_model`` with, per model: ``iptm``, ``ptm``,
``ranking_confidence``, ``mean_plddt``, ``chain_plddt`` (mean pLDDT of each chain) and, for each pair
of chains ``"A-B"``: ``chain_pair_iptm`` (the ipTM of the two chains alone: AlphaFold's interface pTM
with the PAE logits restricted to the residues of those two chains, d0 from their residue count) and
``chain_pair_pae`` (the mean predicted aligned error of the interface, both off-diagonal blocks
``PAE[A, B]`` and ``PAE[B, A]``, in Angstroms); ``info``: per distinct sequence (keyed by its first
chain) the alignment rows read, the UniProt rows for pairing and the templates.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxfold.common.files import PathLike
from jaxfold.data.complex_fasta import CHAIN_SEPARATOR, ComplexRecord, read_complex_fasta
from jaxfold.data.parsers import FastaRecord, ParseError, sanitize_name
from jaxfold.errors import InferenceError
from jaxfold.inference import (
    ModelSpec,
    SequenceReport,
    failure_reason,
    load_parameters,
    load_records,
    relax_ranked,
)
from jaxfold.model_params import is_multimer_preset
from jaxfold.outputs import (
    check_not_finished,
    ranking_summary,
    sequence_output_dir,
    write_model_outputs,
    write_sequence_summary,
)
from jaxfold.progress import NO_PROGRESS, Progress

__all__ = [
    "chain_confidences",
    "check_presets",
    "complex_name",
    "has_complexes",
    "load_complex_records",
    "outputs_in_fasta_order",
    "run_complexes",
]


# ---------------------------------------------------------------------------------------
# Records and presets (the command line's checks).
# ---------------------------------------------------------------------------------------


def complex_name(record: ComplexRecord) -> str:
    """The file-system-safe name of the complex (its output folder and file prefix)."""
    return sanitize_name(record.name)


def load_complex_records(fasta_paths: Iterable[PathLike]) -> list[ComplexRecord]:
    """Every record of every FASTA file, chains split at ``:`` (single chains are 1-chain records).

    Duplicate names are an error (their outputs would share one folder), as for monomers."""
    return load_records(fasta_paths, reader=read_complex_fasta, name_of=complex_name)


def has_complexes(fasta_paths: Iterable[PathLike]) -> bool:
    """Whether any record of these files is a complex: a ``:`` in a sequence line (not a header).

    Decided on the text, so that a malformed complex (``A::B``) is still read, and reported, by the
    complex reader; unreadable files say False (the monomer reader then reports them)."""
    for path in fasta_paths:
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError):
            continue
        if any(CHAIN_SEPARATOR in line for line in text.splitlines() if not line.lstrip().startswith(">")):
            return True
    return False


def check_presets(models: Sequence[str], records: Sequence[ComplexRecord] | None) -> None:
    """The rule: complexes run with multimer presets only, single chains with monomer presets only.

    ``records``: the complexes of the run (None for a run of single chains). A complex run must
    not hold single-chain records (predict them in a run of their own)."""
    multimer = [m for m in models if is_multimer_preset(m)]
    monomer = [m for m in models if not is_multimer_preset(m)]
    if records is None:
        if multimer:
            raise InferenceError(
                f"--models {','.join(multimer)}: AlphaFold-Multimer presets predict complexes; write a "
                "complex as one FASTA record with its chains joined by ':' (e.g. >name SEQA:SEQB), or "
                "use monomer presets (model_1_ptm, ...) for single chains"
            )
        return
    singles = [complex_name(r) for r in records if r.num_chains == 1]
    if singles:
        raise InferenceError(
            f"{', '.join(singles)}: a single chain in a run of complexes; predict single chains in a "
            "separate run with monomer presets (model_N_ptm), or give it its partner chains after a :"
        )
    if monomer:
        raise InferenceError(
            f"--models {','.join(monomer)}: complexes (FASTA records with ':') need AlphaFold-Multimer "
            "presets: --models model_1_multimer_v3,model_2_multimer_v3,... (parameter files "
            "params_model_N_multimer_v3.npz, or --params random)"
        )


# ---------------------------------------------------------------------------------------
# Outputs in FASTA chain order, and per-chain confidences.
# ---------------------------------------------------------------------------------------


def _fasta_order(chains: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(permutation [N_res], chain_index [N_res], chain_ids)``: batch residues in FASTA chain order.

    ``chains``: ``info['chains']`` of :func:`complex_features` (batch order, with ``input_index``,
    ``start``, ``end``, ``chain_id``)."""
    by_input = sorted(chains, key=lambda c: c["input_index"])
    permutation = np.concatenate([np.arange(c["start"], c["end"]) for c in by_input])
    chain_index = np.concatenate([np.full(c["end"] - c["start"], i, np.int32) for i, c in enumerate(by_input)])
    return permutation, chain_index, [c["chain_id"] for c in by_input]


_PER_RESIDUE = (
    "structure_module/final_atom_positions",
    "structure_module/final_atom_mask",
    "confidence/plddt",
    "features/aatype",
    "features/residue_index",
    "features/seq_mask",
)


def outputs_in_fasta_order(
    outputs: Mapping[str, np.ndarray], batch: Mapping[str, np.ndarray], chains: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, np.ndarray], list[str]]:
    """What the writers need, residues in FASTA chain order, and the chain IDs.

    Returns ``({structure, pLDDT [N_res], PAE [N_res, N_res], pTM, ipTM, ranking confidence,
    features/aatype, residue_index, seq_mask, chain_index}, chain_ids)``."""
    permutation, chain_index, chain_ids = _fasta_order(chains)
    source = dict(outputs)
    source["features/aatype"] = np.asarray(batch["aatype"])
    source["features/residue_index"] = np.asarray(batch["residue_index"])
    source["features/seq_mask"] = np.asarray(batch["seq_mask"])
    ordered = {key: np.asarray(source[key])[permutation] for key in _PER_RESIDUE}
    ordered["features/chain_index"] = chain_index
    if "confidence/predicted_aligned_error" in source:
        pae = np.asarray(source["confidence/predicted_aligned_error"])
        ordered["confidence/predicted_aligned_error"] = pae[np.ix_(permutation, permutation)]
    for key in (
        "confidence/max_predicted_aligned_error",
        "confidence/ptm",
        "confidence/iptm",
        "confidence/ranking_confidence",
        "num_recycles",
    ):
        if key in source:
            ordered[key] = np.asarray(source[key])
    return ordered, chain_ids


def chain_confidences(outputs: Mapping[str, np.ndarray], chains: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-chain and per-chain-pair confidences of one model's (batch-order) outputs.

    ``chain_plddt``: chain -> mean pLDDT; ``chain_pair_iptm``: ``"A-B"`` -> interface pTM of those
    two chains alone (:func:`jaxfold.model.confidence.predicted_tm_score` on the PAE logits of
    their residues); ``chain_pair_pae``: ``"A-B"`` -> mean PAE over ``PAE[A, B]`` and ``PAE[B, A]``.
    Pairs are in FASTA order (``A-B``, ``A-C``, ``B-C``)."""
    from jaxfold.model.confidence import predicted_tm_score  # noqa: PLC0415

    by_input = sorted(chains, key=lambda c: c["input_index"])
    plddt = np.asarray(outputs["confidence/plddt"])
    result: dict[str, Any] = {
        "chain_plddt": {c["chain_id"]: round(float(plddt[c["start"] : c["end"]].mean()), 4) for c in by_input}
    }
    logits = outputs.get("predicted_aligned_error/logits")
    pae = outputs.get("confidence/predicted_aligned_error")
    if logits is None or pae is None:
        return result
    logits, pae = np.asarray(logits), np.asarray(pae)
    breaks = np.asarray(outputs["predicted_aligned_error/breaks"])
    pair_iptm, pair_pae = {}, {}
    for a, b in itertools.combinations(by_input, 2):
        rows_a, rows_b = np.arange(a["start"], a["end"]), np.arange(b["start"], b["end"])
        both = np.concatenate([rows_a, rows_b])
        asym = np.concatenate([np.zeros(len(rows_a)), np.ones(len(rows_b))])
        key = f"{a['chain_id']}-{b['chain_id']}"
        pair_iptm[key] = round(
            float(predicted_tm_score(logits[np.ix_(both, both)], breaks, asym_id=asym, interface=True)), 4
        )
        interface = np.concatenate([pae[np.ix_(rows_a, rows_b)].ravel(), pae[np.ix_(rows_b, rows_a)].ravel()])
        pair_pae[key] = round(float(interface.mean()), 3)
    result["chain_pair_iptm"] = pair_iptm
    result["chain_pair_pae"] = pair_pae
    return result


# ---------------------------------------------------------------------------------------
# The whole run.
# ---------------------------------------------------------------------------------------


def _features(
    record: ComplexRecord,
    msa_dir: PathLike | None,
    msa_mode: str,
    databases: Mapping[str, Any],
    output_dir: Path,
    template_mmcif_dir: PathLike | None,
    max_template_date: str | None,
    info: dict,
) -> dict[str, np.ndarray]:
    from jaxfold.data.multimer_pipeline import complex_features, find_chain_msa_dirs  # noqa: PLC0415

    name = complex_name(record)
    if msa_mode == "precomputed":
        if msa_dir is None:
            raise InferenceError("complexes need per-chain alignments: --msa-dir DIR")
        folders = find_chain_msa_dirs(msa_dir, record.name, record.chain_ids, record.sequences)
        return complex_features(
            record.sequences,
            folders,
            template_mmcif_dir=template_mmcif_dir,
            max_template_date=max_template_date,
            info=info,
        )
    if msa_mode == "search":
        databases = dict(databases)
        uniprot = databases.pop("uniprot", None)
        return complex_features(
            record.sequences,
            msa_mode="search",
            databases=databases,
            uniprot_database=uniprot,
            output_dir=output_dir / "msas" / name,
            template_mmcif_dir=template_mmcif_dir,
            max_template_date=max_template_date,
            info=info,
        )
    raise InferenceError(
        f"--msa-mode {msa_mode}: complexes need alignments per chain (--msa-mode precomputed "
        "with --msa-dir, or search with --database NAME=PATH and --database uniprot=PATH)"
    )


def run_complexes(
    records: Sequence[ComplexRecord],
    models: Sequence[ModelSpec],
    output_dir: PathLike,
    *,
    msa_dir: PathLike | None,
    template_mmcif_dir: PathLike | None,
    params: str | None,
    seed: int = 0,
    msa_mode: str = "precomputed",
    databases: Mapping[str, Any] | None = None,
    max_template_date: str | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] = lambda s: None,
    kernels: str = "auto",
    chunk_size: int | str = "auto",
    mesh=None,
    overwrite: bool = False,
    plots: bool = True,
    relax: str = "none",
    relax_device: str = "cpu",
    reraise: bool = False,
) -> list[SequenceReport]:
    """Predicts every complex with every (multimer) model and writes its files into ``output_dir/<name>/``.

    Returns one report per record (``error`` set for the ones that failed: bad alignments, a missing
    chain folder, a model failure; the others still run). Raises :class:`InferenceError` before any
    work for finished outputs in the way (without ``overwrite``) or parameters that do not load.
    Model ``i`` (0-based) of ``models`` samples its MSA with the key ``PRNGKey(i + seed * len(models))``,
    AlphaFold's ``model_random_seed``. ``reraise``: re-raise unexpected errors (``--debug``).
    """
    import jax  # noqa: PLC0415

    from jaxfold.model.predict import predict  # noqa: PLC0415

    progress = progress or NO_PROGRESS
    output_dir = Path(output_dir)
    check_presets([spec.name for spec in models], records)
    for record in records:
        check_not_finished(sequence_output_dir(output_dir, complex_name(record)), overwrite)
    steps_per_record = 1 + 2 * len(models) + 1  # features, (predict, write) per model, summary
    progress.add(len(models) + len(records) * steps_per_record)

    load_parameters(models, params, seed, progress, log)

    reports = []
    for record in records:
        name = complex_name(record)
        seq_dir = sequence_output_dir(output_dir, name)
        report = SequenceReport(name=name, output_dir=seq_dir)
        reports.append(report)
        advanced = 0

        def advance():
            nonlocal advanced
            advanced += 1
            progress.advance()

        try:
            progress.stage(f"{name} features")
            start = time.perf_counter()
            info: dict[str, Any] = {}
            batch = _features(
                record, msa_dir, msa_mode, databases or {}, output_dir, template_mmcif_dir, max_template_date, info
            )
            timings: dict[str, float] = {"features": time.perf_counter() - start}
            advance()
            chains = info["chains"]
            log(
                f"{name}: {record.num_chains} chains ("
                + ", ".join(
                    f"{c['chain_id']} {len(c['sequence'])}" for c in sorted(chains, key=lambda c: c["input_index"])
                )
                + " residues); alignments per sequence: "
                + ", ".join(
                    f"{k} {v.get('num_alignments')} rows"
                    + (f" (+{v['uniprot_rows']} UniProt for pairing)" if v.get("uniprot_rows") else "")
                    for k, v in info["per_sequence"].items()
                )
            )
            results: dict[str, dict[str, np.ndarray]] = {}
            per_model: dict[str, dict[str, Any]] = {}
            for index, spec in enumerate(models):
                progress.stage(f"{name} {spec.name} predicting")
                run_timings: dict[str, Any] = {}
                rng = jax.random.PRNGKey(index + seed * len(models))
                outputs = predict(
                    spec.config,
                    spec.params,
                    batch,
                    mesh=mesh,
                    rng=rng,
                    kernels=kernels,
                    chunk_size=chunk_size,
                    timings=run_timings,
                )
                if not np.all(np.isfinite(outputs["structure_module/final_atom_positions"])):
                    raise InferenceError(
                        "the model produced non-finite coordinates (NaN/inf): check the "
                        "parameters and the precision (--precision fp32)"
                    )
                timings[f"compile_{spec.name}"] = run_timings["compile"]
                timings[f"predict_{spec.name}"] = run_timings["predict"]
                advance()
                progress.stage(f"{name} {spec.name} writing")
                start = time.perf_counter()
                ordered, chain_ids = outputs_in_fasta_order(outputs, batch, chains)
                report.files += write_model_outputs(
                    seq_dir, name, spec.name, ordered, random_params=spec.random, chain_ids=chain_ids
                )
                timings[f"write_{spec.name}"] = time.perf_counter() - start
                advance()
                results[spec.name] = ordered
                per_model[spec.name] = {
                    "iptm": float(outputs["confidence/iptm"]),
                    "ptm": float(outputs["confidence/ptm"]),
                    "ranking_confidence": float(outputs["confidence/ranking_confidence"]),
                    "mean_plddt": round(float(np.mean(outputs["confidence/plddt"])), 4),
                    "num_recycles": int(np.asarray(outputs.get("num_recycles", -1))),
                    **chain_confidences(outputs, chains),
                }
                log(
                    f"{name} {spec.name}: ipTM {per_model[spec.name]['iptm']:.3f}, pTM "
                    f"{per_model[spec.name]['ptm']:.3f}, mean pLDDT {per_model[spec.name]['mean_plddt']:.2f} "
                    f"(compile {run_timings['compile']:.1f} s, predict {run_timings['predict']:.1f} s)"
                )
            progress.stage(f"{name} writing summary")
            timings["total"] = sum(
                v for k, v in timings.items() if k == "features" or k.startswith(("compile_", "predict_", "write_"))
            )
            extra = {
                "chains": [
                    {
                        "chain_id": c["chain_id"],
                        "length": len(c["sequence"]),
                        "entity_id": c["entity_id"],
                        "sym_id": c["sym_id"],
                    }
                    for c in sorted(chains, key=lambda c: c["input_index"])
                ],
                "per_model": per_model,
                # Per distinct sequence (keyed by its first chain), as the monomer 'info'.
                "info": {
                    k: {
                        "num_alignments": v.get("num_alignments"),
                        "uniprot_rows": v.get("uniprot_rows"),
                        "templates": v.get("templates", []),
                    }
                    for k, v in info["per_sequence"].items()
                },
            }
            random_params = any(s.random for s in models)
            relax_ranked(
                report, extra, timings, results, relax, relax_device, random_params, progress, log, record.chain_ids
            )
            report.files += write_sequence_summary(
                seq_dir, name, results, timings, random_params=random_params, plots=plots, extra=extra
            )
            report.ranking = {**ranking_summary(results), "per_model": per_model}
            report.timings = timings
            advance()
        except (InferenceError, FileNotFoundError, ValueError, ParseError) as e:
            # Bad inputs of this complex (a missing chain folder, a bad alignment): say so, go on.
            if reraise and not isinstance(e, InferenceError):
                raise
            report.error = f"{name}: {e}"
            progress.write(f"error: {report.error}")
            progress.advance(steps_per_record - advanced)
        except Exception as e:  # noqa: BLE001  (one failing complex must not end the run)
            if reraise:
                raise
            whole = FastaRecord(
                name=record.name, description=record.description, sequence="".join(record.sequences)
            )  # the residue count it names
            report.error = f"{name}: {failure_reason(e, whole)}"
            progress.write(f"error: {report.error}")
            progress.advance(steps_per_record - advanced)
    progress.stage("done")
    progress.close()
    return reports
