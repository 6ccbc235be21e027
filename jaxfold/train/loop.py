"""The training loop behind `train.py`: data, resume, step, log, checkpoint, evaluate.

    final_step = run_training(config, mesh, data_dir=..., alignment_dir=..., output_dir=..., log=print)

- Data: `TrainingDataset` over the mmCIF and alignment folders (`config.data.train` settings), loaded by a
  `Loader` in worker processes. In a multi-process run each process loads only its rows of every global
  batch (`ProcessShard`), with the same seed everywhere, so the global batch is the one a single process
  would load and every example is loaded once.
- Resume: the newest checkpoint under `<output_dir>/checkpoints` that restores (newer, unreadable ones
  are skipped with a warning naming them); the metrics log is cut back to the restored step, so it never
  goes backwards. Without a checkpoint a run starts fresh (and an old log is cut back to step 0).
- Checkpoints: every `training.checkpoint_every` steps and at the end (asynchronous Orbax, written once:
  Orbax coordinates the processes), with every process's loader state.
- Evaluation: lDDT-Cα of the EMA parameters on held-out chains, in a background thread of process 0.

User errors (unusable data, a batch that does not fit the mesh, a checkpoint that does not restore)
raise `TrainingError` with a one-line reason; nothing is written to `output_dir` before the data has
been checked.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxfold.data.dataset import TrainingDataset
from jaxfold.data.loader import Loader, ProcessShard
from jaxfold.train.checkpoint import CheckpointError, CheckpointManager, load_init_params
from jaxfold.train.metrics_log import MetricsLog
from jaxfold.train.optimizer import make_optimizer
from jaxfold.train.state import TrainState
from jaxfold.train.step import device_batch, loss_fn_from_config, make_train_step, replicate, shard_batch

__all__ = ["TrainingError", "run_training", "gather_process_states"]

BAR_METRICS = ("loss", "fape", "distogram", "masked_msa", "step_time_s", "samples_per_s")


class TrainingError(ValueError):
    """A training run that cannot start or continue; the message says why."""


def gather_process_states(local: dict) -> list[dict]:
    """Every process's JSON-able `local` dict, in process order (all processes must call it)."""
    if jax.process_count() == 1:
        return [local]
    from jax.experimental import multihost_utils  # noqa: PLC0415

    data = np.frombuffer(json.dumps(local).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int32))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: data.size] = data
    everything = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
    return [json.loads(bytes(everything[i, : sizes[i]]).decode()) for i in range(len(sizes))]


def _this_process_loader_state(saved: dict) -> dict:
    """The loader state of this process from a checkpoint's loader item."""
    count, index = jax.process_count(), jax.process_index()
    states = saved["processes"] if "processes" in saved else [saved]
    if len(states) != count:
        raise TrainingError(
            f"the checkpoint was written by a run of {len(states)} process(es); this run "
            f"has {count}: resume with the same number of processes"
        )
    return states[index]


def _open_dataset(cfg, data_dir, alignment_dir, chain_list, seed: int) -> TrainingDataset:
    try:
        # One MSA sample per recycling iteration of the model being trained.
        return TrainingDataset(
            data_dir, alignment_dir, cfg, chain_list=chain_list, seed=seed, num_recycle=int(cfg.model.num_recycle)
        )
    except (OSError, ValueError) as e:  # DatasetError is a ValueError
        raise TrainingError(f"training data: {e}") from None


def run_training(
    cfg,
    mesh,
    *,
    data_dir: str | os.PathLike,
    alignment_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    init_params: str | os.PathLike | None = None,
    chain_list: str | os.PathLike | None = None,
    eval_chain_list: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
    init_fn=None,
    apply_fn=None,
    loss_fn=None,
    progress: bool = True,
) -> int:
    """Train `cfg` (a training config: `model`, `data.train`, `training`) on `mesh` until
    `training.num_steps`; returns the final step.

    `init_fn(cfg, key) -> params`, `apply_fn`, `loss_fn` (see `make_train_step`) replace the model
    (default: AlphaFold's `init_params`, AlphaFold, `jaxfold.losses.total_loss`): tests drive the
    whole loop, multi-process included, with a stand-in that compiles in seconds."""
    t = cfg.training
    data_size = int(mesh.shape["data"]) if mesh is not None else 1
    procs, is_main = jax.process_count(), jax.process_index() == 0
    log = log if is_main else (lambda msg: None)
    if t.batch_size % data_size or t.batch_size % procs:
        raise TrainingError(
            f"training.batch_size {t.batch_size} is not divisible by the mesh's data axis "
            f"{data_size}" + (f" and the {procs} processes" if procs > 1 else "")
        )
    dataset = _open_dataset(cfg, data_dir, alignment_dir, chain_list, int(t.seed))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)  # only once the data is known to be usable
    log(
        f"{len(dataset)} training chains; mesh "
        + (f"dap={mesh.shape['dap']} x data={mesh.shape['data']}" if mesh is not None else "none")
        + f" over {jax.device_count()} devices in {procs} process(es); global batch {t.batch_size}; "
        f"{t.num_steps} steps"
    )

    tic = time.perf_counter()
    if init_fn is None:
        from jaxfold.model.init import init_params as init_fn  # noqa: PLC0415
    fresh = jax.jit(init_fn, static_argnums=0)(cfg, jax.random.PRNGKey(t.seed))
    jax.block_until_ready(fresh)
    log(f"parameters initialised in {time.perf_counter() - tic:.1f} s")
    if init_params:
        fresh, notes = load_init_params(init_params, fresh)
        for n in notes:
            log(n)
    state = replicate(TrainState.create(fresh, make_optimizer(cfg), rng=int(t.seed)), mesh)

    metrics_log = MetricsLog(out, enabled=is_main)
    ckpt = CheckpointManager(out / "checkpoints", keep=t.keep_checkpoints)
    local_batch = t.batch_size // procs
    shard = ProcessShard(dataset, t.batch_size, jax.process_index(), procs) if procs > 1 else dataset
    loader_kwargs = dict(num_workers=t.num_workers, queue_size=t.queue_size * local_batch)
    try:
        restored = ckpt.restore_latest(state, warn=lambda msg: log(f"warning: {msg}"))
    except CheckpointError as e:
        ckpt.close()
        raise TrainingError(str(e)) from None
    if restored is not None:
        state, saved_loader, latest = restored
        log(f"resumed from {ckpt.directory}/{latest}")
        loader = Loader.from_state(
            shard, _this_process_loader_state(saved_loader), num_steps=max(t.num_steps - latest, 0), **loader_kwargs
        )
    else:
        latest = 0
        loader = Loader(shard, local_batch, seed=int(t.seed), start_step=0, num_steps=t.num_steps, **loader_kwargs)
    dropped = metrics_log.truncate_after(latest)
    if dropped:
        log(f"metrics.jsonl: dropped {dropped} record(s) past step {latest} (logged after that checkpoint)")
    start = int(jax.device_get(state.step))

    evaluator = (
        _make_evaluator(cfg, data_dir, alignment_dir, eval_chain_list, mesh) if eval_chain_list and is_main else None
    )
    if loss_fn is None:
        from jaxfold.losses import total_loss  # noqa: PLC0415

        loss_fn = loss_fn_from_config(total_loss, cfg)
    step_fn = make_train_step(cfg, loss_fn, mesh, apply_fn=apply_fn)
    bar = _progress_bar(t.num_steps, start) if progress and is_main else None

    def record_eval(wait: bool = False) -> None:
        if evaluator is None:
            return
        for step, m in evaluator.wait() if wait else evaluator.poll():
            metrics_log.record(step, {f"eval/{k}": v for k, v in m.items() if k != "per_chain"})
            if "lddt_ca" in m:
                log(f"step {step}: EMA lDDT-Ca {m['lddt_ca']:.3f} on {m.get('num_chains', '?')} held-out chains")

    def save() -> None:
        states = gather_process_states(loader.state_dict())
        ckpt.save(state, states[0] if procs == 1 else {"processes": states})

    def submit_eval(step: int) -> None:
        if evaluator is not None:
            # Host copies: in a multi-process run the replicated arrays span every process's devices.
            evaluator.submit(step, jax.device_get(state.ema_params) if procs > 1 else state.ema_params)

    step, last = start, time.perf_counter()
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
                metrics_log.record(step, metrics)
                if metrics.get("skipped"):
                    log(f"step {step}: non-finite loss or gradient, update skipped")
                if bar is not None:
                    bar.set_postfix({k: f"{metrics[k]:.4g}" for k in BAR_METRICS if k in metrics})
            if bar is not None:
                bar.update(1)
            if step % t.checkpoint_every == 0:
                save()
            if step % t.eval_every == 0:
                submit_eval(step)
            record_eval()
        if step > start and ckpt.latest_step() != step:
            save()
    finally:
        if bar is not None:
            bar.close()
        loader.close()
        ckpt.close()
    if evaluator is not None:
        # `wait` hands back what finished; the final EMA parameters are always evaluated, even off the
        # eval_every grid.
        record_eval(wait=True)
        if step > start and step % t.eval_every:
            submit_eval(step)
            record_eval(wait=True)
    if is_main:
        from jaxfold.weights import save_alphafold_params  # noqa: PLC0415

        save_alphafold_params(jax.device_get(state.ema_params), out / "params_ema.npz")
        log(f"done at step {step}; EMA parameters in {out / 'params_ema.npz'}")
    metrics_log.close()
    return step


def _make_evaluator(cfg, data_dir, alignment_dir, eval_chain_list, mesh):
    from jaxfold.train.evaluation import Evaluator  # noqa: PLC0415

    eval_ds = _open_dataset(cfg, data_dir, alignment_dir, eval_chain_list, seed=0)
    limit = cfg.training.eval_max_chains
    n_eval = min(len(eval_ds), limit) if limit else len(eval_ds)
    cache: list[Any] = []

    def eval_examples():
        if not cache:
            cache.extend(eval_ds.sample(i, seed=0) for i in range(n_eval))
        return cache

    single_host_mesh = mesh if mesh is not None and mesh.shape["data"] == 1 and jax.process_count() == 1 else None
    return Evaluator(cfg, eval_examples, mesh=single_host_mesh)


def _progress_bar(total: int, initial: int):
    try:
        from tqdm import tqdm  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, initial=initial, dynamic_ncols=True, unit="step")
