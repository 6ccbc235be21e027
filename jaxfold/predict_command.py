"""The ``infer.py`` command: options -> checked inputs -> :func:`jaxfold.inference.run_inference` -> summary.

Complexes: a FASTA record whose sequence holds ``:`` (``>name`` then ``SEQA:SEQB``, chains A, B, ...) makes
the run one of complexes, predicted by :func:`jaxfold.complex_inference.run_complexes` with
AlphaFold-Multimer presets (``model_N_multimer_v3``); see :func:`jaxfold.complex_inference.check_presets`
for the rule (complexes and single chains are predicted in separate runs).

Exit status: 0 all predicted; 1 a bad input or a failed sequence (one ``error:`` line each, and a summary
naming the failed ones); 2 no parameters given, or a usage error. Every input is checked, and the output
folder is checked writable, before any model work starts.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import sys
import time
from pathlib import Path

from jaxfold import complex_inference, inference, model_params
from jaxfold.common.compilation_cache import default_cache_dir, enable_compilation_cache
from jaxfold.common.files import atomic_write
from jaxfold.data.msa_search import MsaSearchError
from jaxfold.data.parsers import ParseError
from jaxfold.data.pipeline import PipelineError
from jaxfold.errors import InferenceError
from jaxfold.model.memory import claim_device_memory
from jaxfold.outputs import RANDOM_PARAMS_LABEL, RELAX_MODES, check_not_finished, sequence_output_dir
from jaxfold.progress import Progress
from jaxfold.weights import ParamsError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_FASTA = REPO / "examples" / "1psm_A.fasta"
EXAMPLE_MSAS = REPO / "examples" / "msas"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and the usage, exit 2 (argparse's own convention)
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def _chunk_size(text: str):
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="infer.py",
        description="Predict protein structures with AlphaFold2 (jaxfold). Without FASTA files, "
        "predicts the bundled example 1psm_A (38 residues) from its precomputed MSAs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  python infer.py --params random                     # demo on the bundled example\n"
        "  python infer.py my.fasta --params ~/af2_params --msa-dir msas/ --output-dir out/\n"
        "  python infer.py my.fasta --params ~/af2_params --database uniref90=uniref90.fasta "
        "--database mgnify=mgnify.fasta\n"
        "get the official parameters: python -m jaxfold.params download DIR",
    )
    p.add_argument("fasta", nargs="*", help="FASTA file(s); every record is predicted")
    p.add_argument(
        "--params",
        default=os.environ.get("JAXFOLD_PARAMS"),
        help="official params_model_*.npz file, a folder of them, or 'random' "
        "(smoke run with random weights); default $JAXFOLD_PARAMS",
    )
    p.add_argument(
        "--output-dir", default="predictions", help="outputs go to OUTPUT_DIR/<sequence name>/ (default: ./predictions)"
    )
    p.add_argument(
        "--msa-mode",
        choices=("precomputed", "search", "single_sequence"),
        help="precomputed: read --msa-dir/<name>/; search: jackhmmer over --database; "
        "single_sequence: no MSA (default: precomputed with --msa-dir, search with "
        "--database)",
    )
    p.add_argument("--msa-dir", help="folder of per-sequence alignment folders (<name>/*.a3m|sto)")
    p.add_argument(
        "--database",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="sequence database for --msa-mode search (repeatable; NAME e.g. uniref90, "
        "mgnify; a FASTA file, or an HH-suite prefix for hhblits)",
    )
    p.add_argument(
        "--template-hits",
        help="template hits (.hhr from HHsearch or .sto from hmmsearch), or a folder "
        "of <name>/ folders holding them (default: look in the MSA folder)",
    )
    p.add_argument("--template-mmcif-dir", help="folder of <pdb_id>.cif files; without it, no templates are used")
    p.add_argument("--max-template-date", help="YYYY-MM-DD: ignore templates released later (default: today)")
    p.add_argument(
        "--models",
        "--preset",
        dest="models",
        help="comma-separated presets, e.g. model_1_ptm,model_2_ptm (ranked by "
        "confidence); 'tiny' is a small test architecture for --params random. "
        "Default: the preset of the --params file, the model_N_ptm presets of a "
        "--params folder, model_1_ptm for random. Complexes (FASTA records with "
        "chains joined by ':', >name SEQA:SEQB) need model_N_multimer_v3 presets "
        "(default: those of a --params folder, model_1_multimer_v3 for random)",
    )
    p.add_argument("--num-recycle", type=int, help="recycling iterations (default: the preset's, 3)")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="Evoformer activation precision (default fp32; bf16 halves the memory of "
        "the pair and MSA and is faster on GPUs)",
    )
    p.add_argument(
        "--kernels",
        choices=("auto", "xla", "pallas"),
        default="auto",
        help="auto (default): the fused Pallas kernels on a GPU, plain XLA elsewhere",
    )
    p.add_argument(
        "--chunk-size",
        default="auto",
        type=_chunk_size,
        metavar="{auto,N,0}",
        help="rows per chunk of the memory-hungry ops: auto (default) chooses from the "
        "chain length, MSA depth, precision and free device memory (none when it "
        "fits); 0 = no chunking; N = N rows at a time",
    )
    p.add_argument(
        "--mesh",
        metavar="DAPx1",
        help="split each prediction over the first DAP local GPUs with dynamic axial "
        "parallelism, e.g. 2x1 (default: one device)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of MSA sampling (and random parameters)")
    p.add_argument(
        "--workers", type=int, default=1, help="parallel preprocessing processes (MSA reading/search, templates)"
    )
    p.add_argument("--ray", action="store_true", help="preprocess with Ray tasks (needs ray)")
    p.add_argument("--overwrite", action="store_true", help="replace finished predictions in the output folder")
    p.add_argument(
        "--relax",
        choices=RELAX_MODES,
        default="best",
        help="Amber-relax the best model (default, as AlphaFold), every model, or none; "
        'needs OpenMM: pip install "jaxfold[relax]"',
    )
    p.add_argument(
        "--relax-device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="OpenMM platform for the relaxation (default cpu)",
    )
    p.add_argument(
        "--bucket",
        choices=("auto", "none"),
        default="auto",
        help="auto (default): pad each chain to its length bucket (multiples of 32 up to 512, "
        "64 up to 1024, then 128) so records of similar length share one compiled program "
        "(the same prediction to round-off); none: exact shapes",
    )
    p.add_argument("--no-plots", action="store_true", help="do not write the PNG plots")
    p.add_argument(
        "--keep-msa-padding",
        action="store_true",
        help="run AlphaFold's fixed-size batch as is (MSA padded to max_msa_clusters, "
        "extra MSA to max_extra_msa); by default the all-padding rows, which are "
        "masked and change nothing, are dropped: much faster for shallow MSAs",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--compilation-cache",
        default=default_cache_dir(),
        help="persistent XLA compilation cache folder ('' to disable); later runs of the same shapes skip compilation",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    shrink = p.add_argument_group("shrunk parameter files (depth overrides)")
    shrink.add_argument("--evoformer-num-block", type=int)
    shrink.add_argument("--extra-msa-stack-num-block", type=int)
    shrink.add_argument("--structure-module-num-layer", type=int)
    return p


def _fail(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _databases(specs):

    databases = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise InferenceError(f"--database {spec!r}: expected NAME=PATH (e.g. uniref90=uniref90.fasta)")
        databases.setdefault(name.strip(), []).append(path.strip())
    return {k: v[0] if len(v) == 1 else v for k, v in databases.items()}


def _banner(models, on_cpu: bool) -> str:

    width = 78
    lines = [
        RANDOM_PARAMS_LABEL,
        "--params random: the model runs with random weights. The structures and",
        "confidences it writes are meaningless; this checks the pipeline end to end.",
        "For real predictions get the official parameters:",
        "    python -m jaxfold.params download DIR      then  --params DIR",
    ]
    full = [m for m in models if m != "tiny"]
    if on_cpu and full:
        lines += [
            f"Full-size {', '.join(full)} on CPU: 1-2 minutes for the example on 2 cores,",
            "half of it compiling once (cached for later runs of the same length).",
            "--models tiny runs a small test architecture in well under a minute.",
        ]
    return "\n".join(["=" * width] + [f"  {ln}" for ln in lines] + ["=" * width])


def run(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # Before anything starts JAX's backend: OpenMM on the GPU needs memory outside JAX's pool.
    claim_device_memory(os.environ, leave_room_for_openmm=args.relax_device == "cuda")

    def log(text):
        print(text, file=sys.stderr, flush=True)

    # --- parameters ----------------------------------------------------------------------
    if not args.params:
        print(f"error: {model_params.missing_params_message()}", file=sys.stderr)
        return 2
    # --- sequences -----------------------------------------------------------------------
    fasta = list(args.fasta)
    msa_dir = args.msa_dir
    msa_mode = args.msa_mode
    if not fasta:
        fasta = [str(EXAMPLE_FASTA)]
        if not EXAMPLE_FASTA.is_file():
            return _fail(f"no FASTA given and the bundled example {EXAMPLE_FASTA} is missing")
        if msa_dir is None and msa_mode in (None, "precomputed"):
            msa_dir = str(EXAMPLE_MSAS)
            msa_mode = "precomputed"
        log(
            f"No FASTA given: predicting the bundled example {EXAMPLE_FASTA.relative_to(REPO)} "
            f"(MSAs: {msa_mode}{' ' + str(Path(msa_dir)) if msa_dir else ''})."
        )
    # Complexes (jaxfold.complex_inference): a record with ':' (>name SEQA:SEQB) makes this a run of
    # complexes, predicted with AlphaFold-Multimer presets; single chains then need a run of their own.
    complexes = complex_inference.load_complex_records(fasta) if complex_inference.has_complexes(fasta) else None
    records = complexes if complexes is not None else inference.load_records(fasta)
    if msa_mode is None:
        if msa_dir:
            msa_mode = "precomputed"
        elif args.database:
            msa_mode = "search"
        else:
            raise InferenceError(
                "no alignments: pass --msa-dir DIR (precomputed MSAs), "
                "--database NAME=FASTA (search with jackhmmer), or "
                "--msa-mode single_sequence (no MSA: much less accurate)"
            )
    if msa_mode == "precomputed":
        if not msa_dir:
            raise InferenceError("--msa-mode precomputed needs --msa-dir DIR")
        if not Path(msa_dir).is_dir():
            raise InferenceError(f"MSA folder not found: {msa_dir}")
    databases = _databases(args.database)
    if msa_mode == "search" and not databases:
        raise InferenceError("--msa-mode search needs at least one --database NAME=PATH")
    if complexes is not None and args.template_hits:
        raise InferenceError(
            "--template-hits is for single chains: a complex reads each chain's template "
            "hits (pdb_hits.sto / hmm_output.sto) from its alignment folder"
        )
    if complexes is not None and msa_mode == "single_sequence":
        raise InferenceError(
            "--msa-mode single_sequence is for single chains: complexes need per-chain "
            "alignments (--msa-dir DIR, or --database NAME=PATH --database uniprot=PATH)"
        )
    if args.template_hits and not args.template_mmcif_dir:
        raise InferenceError("--template-hits needs --template-mmcif-dir (the template structures)")
    if args.template_mmcif_dir and not Path(args.template_mmcif_dir).is_dir():
        raise InferenceError(f"template mmCIF folder not found: {args.template_mmcif_dir}")
    if args.template_hits and not Path(args.template_hits).exists():
        raise InferenceError(f"template hits not found: {args.template_hits}")
    if args.max_template_date:
        try:
            datetime.date.fromisoformat(args.max_template_date)
        except ValueError:
            raise InferenceError(f"--max-template-date {args.max_template_date!r}: expected YYYY-MM-DD") from None
    if args.ray:
        if importlib.util.find_spec("ray") is None:
            raise InferenceError(
                "--ray needs the 'ray' package, which is not installed: "
                'pip install "ray[default]", or drop --ray to use the built-in '
                "process pool (--workers N)"
            )
    if args.workers < 1:
        raise InferenceError("--workers must be at least 1")
    if args.num_recycle is not None and args.num_recycle < 0:
        raise InferenceError("--num-recycle must be >= 0")

    # --- models --------------------------------------------------------------------------
    models = (
        [m.strip() for m in args.models.split(",") if m.strip()]
        if args.models
        else model_params.default_models(args.params, multimer=complexes is not None)
    )
    if not models:
        raise InferenceError("--models is empty")
    if len(set(models)) != len(models):
        raise InferenceError(f"--models lists a preset twice: {args.models}")
    complex_inference.check_presets(models, complexes)
    overrides = {
        "evoformer_num_block": args.evoformer_num_block,
        "extra_msa_stack_num_block": args.extra_msa_stack_num_block,
        "structure_module_num_layer": args.structure_module_num_layer,
    }
    specs = []
    for name in models:
        if name == "tiny" and args.params != "random":
            raise InferenceError("preset 'tiny' has no official parameters: use it with --params random")
        model_params.resolve_params(args.params, name)  # file-level checks before any work
        config = inference.build_config(
            name, num_recycle=args.num_recycle, precision=args.precision, overrides=overrides
        )
        specs.append(inference.ModelSpec(name=name, config=config))
    output_dir = Path(args.output_dir)
    for record in records:
        name = complex_inference.complex_name(record) if complexes is not None else record
        check_not_finished(sequence_output_dir(output_dir, name), args.overwrite)
    check_writable(output_dir)
    if args.relax != "none":  # before any work: relaxing needs OpenMM
        from jaxfold.relax import require_openmm  # noqa: PLC0415  (optional dependency)

        try:
            require_openmm()
        except ImportError as e:
            raise InferenceError(f"{e} (or pass --relax none)") from None

    # --- run -------------------------------------------------------------------------------
    import jax

    from jaxfold.parallel.mesh import MeshError, prediction_mesh

    try:
        mesh = prediction_mesh(args.mesh)
    except MeshError as e:
        raise InferenceError(f"--mesh: {e}") from None

    on_cpu = jax.default_backend() == "cpu"
    if args.params == "random":
        print(_banner(models, on_cpu), file=sys.stderr, flush=True)
    cache_warning = enable_compilation_cache(args.compilation_cache)
    if cache_warning:
        log(f"warning: {cache_warning}")
    pipeline_options = dict(
        msa_mode=msa_mode,
        msa_dir=msa_dir,
        databases=databases,
        template_hits_path=args.template_hits,
        template_mmcif_dir=args.template_mmcif_dir,
        max_template_date=args.max_template_date,
        output_dir=str(output_dir / "msas") if msa_mode == "search" else None,
    )
    log(
        f"{len(records)} sequence(s), model(s) {', '.join(models)}, backend {jax.default_backend()}"
        f", output {output_dir}"
    )
    progress = Progress(enabled=None if not args.no_progress else False)
    start = time.perf_counter()
    try:
        if complexes is not None:
            reports = complex_inference.run_complexes(
                records,
                specs,
                output_dir,
                msa_dir=msa_dir,
                template_mmcif_dir=args.template_mmcif_dir,
                params=args.params,
                seed=args.seed,
                msa_mode=msa_mode,
                databases=databases,
                max_template_date=args.max_template_date,
                progress=progress,
                log=progress.write,
                kernels=args.kernels,
                chunk_size=args.chunk_size,
                mesh=mesh,
                overwrite=args.overwrite,
                plots=not args.no_plots,
                relax=args.relax,
                relax_device=args.relax_device,
                reraise=args.debug,
            )
        else:
            reports = inference.run_inference(
                records,
                specs,
                output_dir,
                pipeline_options=pipeline_options,
                params=args.params,
                seed=args.seed,
                workers=args.workers,
                use_ray=args.ray,
                overwrite=args.overwrite,
                plots=not args.no_plots,
                progress=progress,
                log=progress.write,
                trim_msa_padding=not args.keep_msa_padding,
                mesh=mesh,
                kernels=args.kernels,
                chunk_size=args.chunk_size,
                bucket=args.bucket,
                relax=args.relax,
                relax_device=args.relax_device,
                reraise=args.debug,
            )
    finally:
        progress.close()
    failed = [r for r in reports if r.error]  # each already reported on its own line as it failed
    for report in reports:
        if report.error:
            continue
        best = report.ranking["order"][0]
        score = (
            f"ipTM+pTM {report.ranking['iptm+ptm'][best]:.3f}"
            if "iptm+ptm" in report.ranking
            else f"mean pLDDT {report.ranking['plddts'][best]:.2f}"
        )
        log(
            f"{report.name}: {len(report.ranking['order'])} model(s) written to {report.output_dir}; "
            f"best {best} ({score})"
        )
    log(
        f"Finished in {time.perf_counter() - start:.1f} s: {len(reports) - len(failed)} predicted, "
        f"{len(failed)} failed" + (f": {', '.join(r.name for r in failed)}" if failed else "") + "."
    )
    if args.params == "random":
        log(f"Reminder: {RANDOM_PARAMS_LABEL}.")
    return 1 if failed else 0


def check_writable(output_dir: Path) -> None:
    """Fails before any work when the output folder cannot be created or written."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = atomic_write(output_dir / ".jaxfold-write-test", b"")
        probe.unlink()
    except OSError as e:
        raise InferenceError(f"cannot write to the output folder {output_dir}: {e.strerror or e}") from None


def main(argv=None) -> int:
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        return run(argv)
    except KeyboardInterrupt:
        print("\ninterrupted: the files already written are kept", file=sys.stderr)
        return 130
    except (InferenceError, PipelineError, MsaSearchError, ParseError, ParamsError) as e:
        if debug:
            raise
        return _fail(str(e))
    except OSError as e:
        if debug:
            raise
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        return _fail(f"{e.strerror or e}{where}")
    except Exception as e:  # noqa: BLE001 - an unexpected failure: one line unless --debug
        if debug:
            raise
        return _fail(f"unexpected {type(e).__name__}: {e} (rerun with --debug for the traceback)")
