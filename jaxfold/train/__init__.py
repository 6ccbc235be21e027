"""Training AlphaFold2 in JAX: state, optimizer, compiled step, checkpoints, metrics log, evaluation, loop.

A training config is any preset loaded with `jaxfold.config.model_config` (`initial_training`,
`finetuning`, `short_training`, or a model preset such as `tiny`): `[data.train]` holds the examples'
settings (crop, MSA, templates), `[training]` the optimiser and the loop (`configs/base.toml`).

Public API:

- `TrainState`, `ema_update` (`state.py`); `alphafold_schedule`, `make_optimizer` (`optimizer.py`).
- `make_train_step(config, loss_fn, mesh=None, apply_fn=None)`, `shard_batch`, `replicate`,
  `stack_examples`, `loss_fn_from_config` (`step.py`).
- `CheckpointManager`, `CheckpointError`, `load_init_params` (`checkpoint.py`); `MetricsLog` (`metrics_log.py`).
- `Evaluator`, `evaluate_lddt_ca` (`evaluation.py`).
- `run_training`, `TrainingError` (`loop.py`: what `train.py` runs).
"""

from __future__ import annotations

__all__ = [
    "TrainState",
    "ema_update",
    "alphafold_schedule",
    "make_optimizer",
    "make_train_step",
    "shard_batch",
    "replicate",
    "stack_examples",
    "loss_fn_from_config",
    "CheckpointManager",
    "CheckpointError",
    "load_init_params",
    "MetricsLog",
    "Evaluator",
    "evaluate_lddt_ca",
    "run_training",
    "TrainingError",
]

_MODULE_OF = {
    "TrainState": "state",
    "ema_update": "state",
    "alphafold_schedule": "optimizer",
    "make_optimizer": "optimizer",
    "make_train_step": "step",
    "shard_batch": "step",
    "replicate": "step",
    "stack_examples": "step",
    "loss_fn_from_config": "step",
    "CheckpointManager": "checkpoint",
    "CheckpointError": "checkpoint",
    "load_init_params": "checkpoint",
    "MetricsLog": "metrics_log",
    "Evaluator": "evaluation",
    "evaluate_lddt_ca": "evaluation",
    "run_training": "loop",
    "TrainingError": "loop",
}


def __getattr__(name: str):  # lazy: importing jaxfold.train does not import jax/orbax
    if name in _MODULE_OF:
        import importlib  # noqa: PLC0415

        return getattr(importlib.import_module(f"jaxfold.train.{_MODULE_OF[name]}"), name)
    raise AttributeError(f"module 'jaxfold.train' has no attribute {name!r}")
