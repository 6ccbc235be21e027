"""Orbax checkpoints of a training run: `TrainState` (params, opt_state, EMA, step, RNG, skip counter) plus
the data loader's state (a JSON-able dict), saved asynchronously and atomically, keeping the last K.

    ckpt = CheckpointManager(out_dir / "checkpoints", keep=5)
    ckpt.save(state, loader_state=loader.state_dict())      # returns at once; written in the background
    state, loader_state = ckpt.restore(template_state)       # latest step (or `step=`), bit-identical
    ckpt.close()                                             # waits for pending saves

Layout: `<directory>/<step>/{state,loader}` (Orbax). A save goes to a temporary folder that is renamed
when complete, so a crash never leaves a half-written step behind; older steps are deleted only after a
newer save has finished, so the newest good checkpoint is never removed. A missing or unreadable step
raises `CheckpointError` naming the directory and the step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxfold.train.state import TrainState

__all__ = ["CheckpointManager", "CheckpointError"]


class CheckpointError(RuntimeError):
    """A checkpoint that is missing or cannot be restored."""


def _abstract(tree: Any) -> Any:
    """ShapeDtypeStructs (keeping each array's sharding) that tell Orbax what to restore into."""
    def leaf(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return x
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree_util.tree_map(leaf, tree)


class CheckpointManager:
    """Keep-last-K asynchronous Orbax checkpoints of `TrainState` + loader state under `directory`."""

    def __init__(self, directory: str | os.PathLike, keep: int = 5, async_save: bool = True,
                 create: bool = True):
        self.directory = Path(directory).absolute()
        if not create and not self.directory.is_dir():
            raise CheckpointError(f"checkpoint directory {str(self.directory)!r} does not exist")
        options = ocp.CheckpointManagerOptions(max_to_keep=keep if keep and keep > 0 else None,
                                               enable_async_checkpointing=async_save, create=create)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "loader"))

    # -- queries -------------------------------------------------------------
    def all_steps(self) -> list[int]:
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    # -- save / restore -----------------------------------------------------
    def save(self, state: TrainState, loader_state: dict | None = None, *, step: int | None = None,
             force: bool = True) -> bool:
        """Start saving `state` (and `loader_state`) as `step` (default `state.step`); returns whether a
        save was started. Arrays are copied off the device before it returns, so `state` may then be
        donated to the next step."""
        step = int(jax.device_get(state.step)) if step is None else int(step)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  loader=ocp.args.JsonSave(dict(loader_state or {})))
        return bool(self._manager.save(step, args=args, force=force))

    def restore(self, template: TrainState, step: int | None = None) -> tuple[TrainState, dict]:
        """Restore `step` (default: the latest) into the structure, dtypes and shardings of `template`
        (a `TrainState` or its `jax.eval_shape`). Returns `(state, loader_state)`."""
        self.wait()
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise CheckpointError(f"no checkpoint in {str(self.directory)!r}")
            step = steps[-1]
        if step not in steps:
            raise CheckpointError(f"checkpoint directory {str(self.directory)!r} has no step {step} "
                                  f"(available: {steps or 'none'})")
        args = ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(template)),
                                  loader=ocp.args.JsonRestore())
        try:
            restored = self._manager.restore(step, args=args)
            state, loader_state = restored["state"], restored["loader"]
            if not isinstance(state, TrainState):
                state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template),
                                                     jax.tree_util.tree_leaves(state))
        except Exception as e:  # noqa: BLE001  (Orbax/TensorStore raise many types)
            raise CheckpointError(f"checkpoint step {step} in {str(self.directory)!r} is corrupt or does not "
                                  f"match the model/optimizer: {type(e).__name__}: {e}") from e
        if int(jax.device_get(state.step)) != step:
            raise CheckpointError(f"checkpoint step {step} in {str(self.directory)!r} holds state.step "
                                  f"{int(jax.device_get(state.step))}")
        return state, dict(loader_state or {})

    def wait(self) -> None:
        """Block until pending asynchronous saves are written."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "CheckpointManager":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
