"""Train AlphaFold2 (monomer) with jaxfold.

    python train.py --mesh 8x64 --config initial_training --data-dir MMCIF_DIR --alignment-dir ALN_DIR \\
        --output-dir OUT [--init-params official.npz | ORBAX_RUN_DIR] [--num-steps N] [--seed S] \\
        [--chain-list FILE] [--eval-chain-list FILE] [--set training.batch_size=16 ...]

`--mesh DAPxDATA`: dynamic-axial-parallel size x data-parallel size; the product must equal the device
count over all processes. Multi-process runs: give every process `--coordinator HOST:PORT
--num-processes N --process-id I` (or the environment variables JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID); under SLURM / Open MPI `jax.distributed` finds them itself. Metrics
go to `OUT/metrics.jsonl` (and TensorBoard under `OUT/tensorboard` when `tensorboardX` is installed);
checkpoints to `OUT/checkpoints` (rerunning the command resumes from the newest good one); the final EMA
parameters to `OUT/params_ema.npz` (official layout). The loop lives in `jaxfold.train.loop`.
"""

from __future__ import annotations

import argparse
import os
import sys

from jaxfold.common.compilation_cache import default_cache_dir, enable_compilation_cache
from jaxfold.config import available_presets

TRAINING_PRESETS = ("initial_training", "finetuning", "short_training")


def parse_args(argv=None) -> argparse.Namespace:
    others = [p for p in available_presets() if p not in TRAINING_PRESETS and p != "training_base"]
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--mesh", default="1x1", help="DAPxDATA, e.g. 8x64 (or dap=8,data=64)")
    p.add_argument(
        "--config",
        default="initial_training",
        help=f"preset: {', '.join(TRAINING_PRESETS)} (training recipes), or any model preset "
        f"({', '.join(others)}), or a .toml path",
    )
    p.add_argument("--data-dir", required=True, help="folder of <pdb_id>.cif files")
    p.add_argument("--alignment-dir", required=True, help="folder of <pdb_id>_<chain>/ alignment folders")
    p.add_argument("--output-dir", required=True)
    p.add_argument(
        "--init-params",
        default=None,
        help="official .npz, or an earlier run's output/checkpoint folder (its EMA parameters)",
    )
    p.add_argument("--num-steps", type=int, default=None, help="override training.num_steps")
    p.add_argument("--seed", type=int, default=None, help="override training.seed")
    p.add_argument("--chain-list", default=None, help="training chain ids, one per line")
    p.add_argument("--eval-chain-list", default=None, help="held-out chain ids for lDDT-Ca evaluation")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="config override, e.g. --set training.batch_size=16 (VALUE parsed as TOML)",
    )
    p.add_argument(
        "--compilation-cache",
        default=default_cache_dir(),
        help="persistent XLA compilation cache folder ('' to disable): a resumed run skips compiling the step",
    )
    g = p.add_argument_group("multi-process runs (one command per process)")
    g.add_argument(
        "--coordinator",
        default=os.environ.get("JAX_COORDINATOR_ADDRESS"),
        help="HOST:PORT of process 0 (env JAX_COORDINATOR_ADDRESS)",
    )
    g.add_argument(
        "--num-processes",
        type=int,
        default=_env_int("JAX_NUM_PROCESSES"),
        help="number of processes (env JAX_NUM_PROCESSES)",
    )
    g.add_argument(
        "--process-id",
        type=int,
        default=_env_int("JAX_PROCESS_ID"),
        help="this process's index, 0..N-1 (env JAX_PROCESS_ID)",
    )
    return p.parse_args(argv)


def _env_int(name: str) -> int | None:
    return int(os.environ[name]) if os.environ.get(name, "").strip() else None


def _error(msg: str) -> int:
    print(f"train.py: error: {msg}", file=sys.stderr, flush=True)
    return 2


def _start_distributed(args) -> None:
    import jax  # noqa: PLC0415

    from jaxfold.parallel.mesh import initialize_distributed  # noqa: PLC0415

    if args.num_processes is not None and args.num_processes > 1:
        if args.coordinator is None or args.process_id is None:
            raise ValueError("--num-processes > 1 needs --coordinator HOST:PORT and --process-id")
        jax.distributed.initialize(args.coordinator, num_processes=args.num_processes, process_id=args.process_id)
    else:
        initialize_distributed()  # a cluster launcher's environment (SLURM, Open MPI, ...), if any


def main(argv=None) -> int:
    args = parse_args(argv)
    from jaxfold.config import model_config, parse_overrides  # noqa: PLC0415
    from jaxfold.parallel.mesh import MeshError, make_mesh  # noqa: PLC0415

    try:
        overrides = parse_overrides(args.set)
    except ValueError as e:
        return _error(f"--set {e}")
    if args.num_steps is not None:
        overrides["training.num_steps"] = args.num_steps
    if args.seed is not None:
        overrides["training.seed"] = args.seed
    try:
        cfg = model_config(args.config, **overrides)
    except (ValueError, TypeError, KeyError) as e:
        return _error(f"--config {args.config!r}: {e}")
    try:
        _start_distributed(args)
        mesh = make_mesh(args.mesh)
    except (MeshError, ValueError) as e:
        return _error(f"--mesh: {e}" if isinstance(e, MeshError) else str(e))
    cache_warning = enable_compilation_cache(args.compilation_cache)
    if cache_warning:
        print(f"train.py: warning: {cache_warning}", file=sys.stderr, flush=True)

    from jaxfold.data.loader import LoaderError  # noqa: PLC0415
    from jaxfold.train.loop import TrainingError, run_training  # noqa: PLC0415
    from jaxfold.weights import ParamsError  # noqa: PLC0415

    try:
        run_training(
            cfg,
            mesh,
            data_dir=args.data_dir,
            alignment_dir=args.alignment_dir,
            output_dir=args.output_dir,
            init_params=args.init_params,
            chain_list=args.chain_list,
            eval_chain_list=args.eval_chain_list,
            log=lambda msg: print(f"train.py: {msg}", file=sys.stderr, flush=True),
        )
    except (TrainingError, ParamsError, LoaderError) as e:
        return _error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
