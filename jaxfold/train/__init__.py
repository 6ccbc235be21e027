"""Training AlphaFold2 in JAX: config, state, optimizer, compiled step, checkpoints, evaluation.

Public API:

- `load_training_config(preset, **overrides)`: a `Config` with `model`, `data` and a `training` table
  (presets `initial_training`, `finetuning`, or any model preset such as `tiny`: every preset carries the
  `training` defaults of `configs/base.toml`).
- `TrainState`, `ema_update` (`state.py`); `alphafold_schedule`, `make_optimizer` (`optimizer.py`).
- `make_train_step(config, loss_fn, mesh=None, apply_fn=None)`, `shard_batch`, `replicate`,
  `stack_examples`, `loss_fn_from_config` (`step.py`).
- `CheckpointManager`, `CheckpointError` (`checkpoint.py`).
- `Evaluator`, `evaluate_lddt_ca` (`evaluation.py`).
"""

from __future__ import annotations

from typing import Any

from jaxfold.config import Config, model_config

__all__ = [
    "load_training_config",
    "TrainState", "ema_update", "alphafold_schedule", "make_optimizer",
    "make_train_step", "shard_batch", "replicate", "stack_examples", "loss_fn_from_config",
    "CheckpointManager", "CheckpointError", "Evaluator", "evaluate_lddt_ca",
]


def load_training_config(preset: str = "initial_training", **overrides: Any) -> Config:
    """A training preset (`initial_training`, `finetuning`) or any model preset (e.g. `tiny`): the
    `training` table's defaults live in `configs/base.toml`, so this is `model_config` under its
    training name. Overrides: `jaxfold.config` short names or dotted paths (`**{"training.batch_size": 4}`).
    """
    return model_config(preset, **overrides)


def __getattr__(name: str):  # lazy: importing the config loader does not import jax/orbax
    if name in ("TrainState", "ema_update"):
        from jaxfold.train import state  # noqa: PLC0415
        return getattr(state, name)
    if name in ("alphafold_schedule", "make_optimizer"):
        from jaxfold.train import optimizer  # noqa: PLC0415
        return getattr(optimizer, name)
    if name in ("make_train_step", "shard_batch", "replicate", "stack_examples", "loss_fn_from_config"):
        from jaxfold.train import step  # noqa: PLC0415
        return getattr(step, name)
    if name in ("CheckpointManager", "CheckpointError"):
        from jaxfold.train import checkpoint  # noqa: PLC0415
        return getattr(checkpoint, name)
    if name in ("Evaluator", "evaluate_lddt_ca"):
        from jaxfold.train import evaluation  # noqa: PLC0415
        return getattr(evaluation, name)
    raise AttributeError(f"module 'jaxfold.train' has no attribute {name!r}")
