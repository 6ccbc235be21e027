"""Train AlphaFold2 (monomer) with jaxfold.

    python train.py --mesh 8x64 --config initial_training --data-dir MMCIF_DIR --alignment-dir ALN_DIR \\
        --output-dir OUT [--init-params official.npz | ORBAX_RUN_DIR] [--num-steps N] [--seed S] \\
        [--chain-list FILE] [--eval-chain-list FILE]

`--mesh DAPxDATA`: dynamic-axial-parallel size x data-parallel size; the product must equal the device
count (over all hosts; multi-host runs start with `jax.distributed.initialize()`). The global batch
(`training.batch_size`) is split over `data`. Metrics go to `OUT/metrics.jsonl` (and TensorBoard under
`OUT/tensorboard` when `tensorboardX` is installed); checkpoints to `OUT/checkpoints` (the run resumes from
the latest one automatically); the final EMA parameters to `OUT/params_ema.npz` (official layout).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mesh", default="1x1", help="DAPxDATA, e.g. 8x64 (or dap=8,data=64)")
    p.add_argument("--config", default="initial_training",
                   help="training preset: initial_training, finetuning, or a .toml path")
    p.add_argument("--data-dir", required=True, help="folder of <pdb_id>.cif files")
    p.add_argument("--alignment-dir", required=True, help="folder of <pdb_id>_<chain>/ alignment folders")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--init-params", default=None,
                   help="official .npz, or an earlier run's output/checkpoint folder (its EMA parameters)")
    p.add_argument("--num-steps", type=int, default=None, help="override training.num_steps")
    p.add_argument("--seed", type=int, default=None, help="override training.seed")
    p.add_argument("--chain-list", default=None, help="training chain ids, one per line")
    p.add_argument("--eval-chain-list", default=None, help="held-out chain ids for lDDT-Ca evaluation")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                   help="config override, e.g. --set training.batch_size=16 (VALUE parsed as TOML)")
    return p.parse_args(argv)


def _load_init_params(path: Path, fresh: dict) -> tuple[dict, list[str]]:
    """Overlay parameters from `path` onto `fresh` (same key layout); returns (params, notes).

    Keys absent from the file keep their fresh initialisation (e.g. the pTM head when fine-tuning from
    initial-training parameters); keys of the file the model lacks are ignored; shapes must agree."""
    import numpy as np  # noqa: PLC0415

    from jaxfold.weights import ROOT_SCOPE, ParamsError, read_npz, tree_to_flat  # noqa: PLC0415

    fresh_flat = tree_to_flat(fresh)
    if path.is_dir():
        from jaxfold.train.checkpoint import CheckpointManager  # noqa: PLC0415

        ckpt_dir = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        import orbax.checkpoint as ocp  # noqa: PLC0415

        mgr = CheckpointManager(ckpt_dir, create=False)
        step = mgr.latest_step()
        if step is None:
            raise ParamsError(f"--init-params {str(path)!r}: no checkpoint in {str(ckpt_dir)!r}")
        raw = ocp.StandardCheckpointer().restore(ckpt_dir / str(step) / "state")
        ema = raw["ema_params"] if isinstance(raw, dict) else raw.ema_params
        flat = {k: np.asarray(v) for k, v in tree_to_flat(ema).items()}
        mgr.close()
    else:
        flat = {k.split("/", 1)[1] if k.startswith(ROOT_SCOPE + "/") else k: v
                for k, v in read_npz(path).items()}
    bad = [f"{k}: file {flat[k].shape} vs model {fresh_flat[k].shape}" for k in flat
           if k in fresh_flat and tuple(flat[k].shape) != tuple(fresh_flat[k].shape)]
    if bad:
        raise ParamsError(f"--init-params {str(path)!r} does not fit the config: " + "; ".join(bad[:10]))
    merged = {k: (np.asarray(flat[k], np.float32) if k in flat else v) for k, v in fresh_flat.items()}
    notes = []
    missing = sorted(set(fresh_flat) - set(flat))
    if missing:
        notes.append(f"{len(missing)} parameter arrays not in {path} start fresh (e.g. {missing[0]})")
    extra = sorted(set(flat) - set(fresh_flat))
    if extra:
        notes.append(f"{len(extra)} parameter arrays of {path} are not used by this config (e.g. {extra[0]})")
    from jaxfold.weights import flat_to_tree  # noqa: PLC0415

    return flat_to_tree(merged), notes


def main(argv=None) -> int:
    args = parse_args(argv)

    from jaxfold.parallel.mesh import MeshError, initialize_distributed, make_mesh, parse_mesh_spec  # noqa: PLC0415

    try:
        sizes = parse_mesh_spec(args.mesh)
        initialize_distributed()
        mesh = make_mesh(args.mesh)
    except MeshError as e:
        print(f"train.py: error: --mesh: {e}", file=sys.stderr)
        return 2

    from jaxfold.config import parse_overrides  # noqa: PLC0415
    from jaxfold.train import load_training_config  # noqa: PLC0415

    try:
        overrides = parse_overrides(args.set)
    except ValueError as e:
        raise SystemExit(f"train.py: error: --set {e}") from None
    if args.num_steps is not None:
        overrides["training.num_steps"] = args.num_steps
    if args.seed is not None:
        overrides["training.seed"] = args.seed
    try:
        cfg = load_training_config(args.config, **overrides)
    except (ValueError, TypeError, KeyError) as e:
        print(f"train.py: error: --config {args.config!r}: {e}", file=sys.stderr)
        return 2
    t = cfg.training
    if t.batch_size % sizes["data"]:
        print(f"train.py: error: training.batch_size {t.batch_size} is not divisible by the mesh's data "
              f"axis {sizes['data']} (--mesh {args.mesh})", file=sys.stderr)
        return 2

    try:
        from jaxfold.data.dataset import TrainingDataset, training_dataset_kwargs  # noqa: PLC0415
        from jaxfold.data.loader import Loader  # noqa: PLC0415
        from jaxfold.losses import total_loss  # noqa: PLC0415
    except ImportError as e:
        print(f"train.py: error: the training data pipeline or losses are not available yet ({e}); "
              "jaxfold.data.dataset.TrainingDataset, jaxfold.data.loader.Loader and "
              "jaxfold.losses.total_loss are required. Nothing was trained.", file=sys.stderr)
        return 2

    import jax  # noqa: PLC0415

    from jaxfold.model.init import init_params  # noqa: PLC0415
    from jaxfold.train.checkpoint import CheckpointManager  # noqa: PLC0415
    from jaxfold.train.evaluation import Evaluator  # noqa: PLC0415
    from jaxfold.train.optimizer import make_optimizer  # noqa: PLC0415
    from jaxfold.train.state import TrainState  # noqa: PLC0415
    from jaxfold.train.step import (  # noqa: PLC0415
        device_batch, loss_fn_from_config, make_train_step, replicate, shard_batch)
    from jaxfold.weights import save_alphafold_params  # noqa: PLC0415

    is_main = jax.process_index() == 0
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = (lambda msg: print(f"train.py: {msg}", file=sys.stderr, flush=True)) if is_main else (lambda m: None)

    dataset_kwargs = training_dataset_kwargs(cfg)
    try:
        dataset = TrainingDataset(args.data_dir, args.alignment_dir, cfg, chain_list=args.chain_list,
                                  seed=t.seed, **dataset_kwargs)
    except (OSError, ValueError) as e:  # DatasetError is a ValueError
        print(f"train.py: error: training data: {e}", file=sys.stderr)
        return 2
    if len(dataset) == 0:
        print(f"train.py: error: no usable training chains in {args.data_dir} / {args.alignment_dir}",
              file=sys.stderr)
        return 2
    log(f"{len(dataset)} training chains; mesh dap={sizes['dap']} x data={sizes['data']}; "
        f"global batch {t.batch_size}; {t.num_steps} steps")

    tic = time.perf_counter()
    fresh = jax.jit(init_params, static_argnums=0)(cfg, jax.random.PRNGKey(t.seed))
    jax.block_until_ready(fresh)
    log(f"parameters initialised in {time.perf_counter() - tic:.1f} s")
    if args.init_params:
        fresh, notes = _load_init_params(Path(args.init_params), jax.device_get(fresh))
        for n in notes:
            log(n)
    tx = make_optimizer(cfg)
    state = replicate(TrainState.create(fresh, tx, rng=int(t.seed)), mesh)

    ckpt = CheckpointManager(out / "checkpoints", keep=t.keep_checkpoints)
    per_process = t.batch_size // jax.process_count()
    loader_seed = int(t.seed) + 7919 * jax.process_index()
    latest = ckpt.latest_step()
    if latest is not None:
        state, loader_state = ckpt.restore(state)
        log(f"resumed from {ckpt.directory}/{latest}")
        remaining = max(t.num_steps - latest, 0)
        loader = Loader.from_state(dataset, loader_state, num_workers=t.num_workers,
                                   queue_size=t.queue_size * per_process, num_steps=remaining)
    else:
        loader = Loader(dataset, per_process, num_workers=t.num_workers, seed=loader_seed,
                        queue_size=t.queue_size * per_process, start_step=0, num_steps=t.num_steps)
    start = int(jax.device_get(state.step))

    evaluator = None
    if args.eval_chain_list:
        eval_ds = TrainingDataset(args.data_dir, args.alignment_dir, cfg, chain_list=args.eval_chain_list,
                                  seed=0, **dataset_kwargs)
        n_eval = len(eval_ds) if not t.eval_max_chains else min(len(eval_ds), t.eval_max_chains)
        cache: list = []

        def eval_examples():
            if not cache:
                cache.extend(eval_ds.sample(i, seed=0) for i in range(n_eval))
            return cache

        evaluator = Evaluator(cfg, eval_examples, mesh=mesh if sizes["data"] == 1 else None)

    step_fn = make_train_step(cfg, loss_fn_from_config(total_loss, cfg), mesh)

    writer = None
    if is_main:
        try:
            from tensorboardX import SummaryWriter  # noqa: PLC0415

            writer = SummaryWriter(str(out / "tensorboard"))
        except ImportError:
            pass
    try:
        from tqdm import tqdm  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        tqdm = None
    bar = tqdm(total=t.num_steps, initial=start, disable=not is_main, dynamic_ncols=True, unit="step") \
        if tqdm else None

    def record(step: int, metrics: dict) -> None:
        if not is_main:
            return
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if writer is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    writer.add_scalar(k, v, step)

    def drain_eval(wait: bool = False) -> None:
        if evaluator is not None:
            for step, m in (evaluator.wait() if wait else evaluator.poll()):
                record(step, {f"eval/{k}": v for k, v in m.items() if k != "per_chain"})
                if "lddt_ca" in m:
                    log(f"step {step}: EMA lDDT-Ca {m['lddt_ca']:.3f} on {m.get('num_chains', '?')} "
                        "held-out chains")

    step = start
    last = time.perf_counter()
    try:
        for batch in loader:
            state, metrics = step_fn(state, shard_batch(device_batch(batch), mesh))
            step += 1
            if step == start + 1:
                jax.block_until_ready(metrics)
                log(f"first step took {time.perf_counter() - last:.1f} s (first batch + XLA compilation)")
            if step % t.log_every == 0 or step == t.num_steps:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                now = time.perf_counter()
                dt = (now - last) / (t.log_every if step > start + 1 else 1)
                last = now
                metrics.update(step_time_s=dt, samples_per_s=t.batch_size / max(dt, 1e-9))
                record(step, metrics)
                if metrics.get("skipped"):
                    log(f"step {step}: non-finite loss or gradient, update skipped")
                if bar is not None:
                    bar.set_postfix({k: f"{metrics[k]:.4g}" for k in
                                     ("loss", "fape", "distogram", "masked_msa", "step_time_s", "samples_per_s")
                                     if k in metrics})
            if bar is not None:
                bar.update(1)
            if step % t.checkpoint_every == 0:
                ckpt.save(state, loader.state_dict())
            if evaluator is not None and step % t.eval_every == 0:
                evaluator.submit(step, state.ema_params)
            drain_eval()
    finally:
        if bar is not None:
            bar.close()
        loader.close()
    if step > start and ckpt.latest_step() != step:
        ckpt.save(state, loader.state_dict())
    ckpt.close()
    if evaluator is not None:
        # `wait` hands back what finished (a bare wait() + poll() would drop it); the final EMA
        # parameters are always evaluated, even off the eval_every grid.
        drain_eval(wait=True)
        if step > start and step % t.eval_every:
            evaluator.submit(step, state.ema_params)
            drain_eval(wait=True)
    if is_main:
        save_alphafold_params(jax.device_get(state.ema_params), out / "params_ema.npz")
        log(f"done at step {step}; EMA parameters in {out / 'params_ema.npz'}")
    if writer is not None:
        writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
