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

Resuming (`restore_latest`): the newest step that restores is used; a newer one that does not (truncated
or corrupted files, a folder someone copied half of) is reported through `warn`, naming it, and moved
aside to `<step>.corrupt` so later saves and restarts do not trip over it; if no step restores, one
`CheckpointError` lists each step's reason. `load_init_params` starts a run from parameters: an
official `.npz` or an earlier run's checkpoint (its EMA parameters).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxfold.train.state import TrainState

__all__ = ["CheckpointManager", "CheckpointError", "load_init_params"]


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

    def __init__(self, directory: str | os.PathLike, keep: int = 5, async_save: bool = True, create: bool = True):
        self.directory = Path(directory).absolute()
        if not create and not self.directory.is_dir():
            raise CheckpointError(f"checkpoint directory {str(self.directory)!r} does not exist")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep if keep and keep > 0 else None, enable_async_checkpointing=async_save, create=create
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "loader"))

    # -- queries -------------------------------------------------------------
    def all_steps(self) -> list[int]:
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    # -- save / restore -----------------------------------------------------
    def save(
        self, state: TrainState, loader_state: dict | None = None, *, step: int | None = None, force: bool = True
    ) -> bool:
        """Start saving `state` (and `loader_state`) as `step` (default `state.step`); returns whether a
        save was started. Arrays are copied off the device before it returns, so `state` may then be
        donated to the next step."""
        step = int(jax.device_get(state.step)) if step is None else int(step)
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), loader=ocp.args.JsonSave(dict(loader_state or {}))
        )
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
            raise CheckpointError(
                f"checkpoint directory {str(self.directory)!r} has no step {step} (available: {steps or 'none'})"
            )
        args = ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(template)), loader=ocp.args.JsonRestore())
        try:
            restored = self._manager.restore(step, args=args)
            state, loader_state = restored["state"], restored["loader"]
            if not isinstance(state, TrainState):
                state = jax.tree_util.tree_unflatten(
                    jax.tree_util.tree_structure(template), jax.tree_util.tree_leaves(state)
                )
        except Exception as e:  # noqa: BLE001  (Orbax/TensorStore raise many types)
            raise CheckpointError(
                f"checkpoint step {step} in {str(self.directory)!r} is corrupt or does not "
                f"match the model/optimizer: {type(e).__name__}: {e}"
            ) from e
        if int(jax.device_get(state.step)) != step:
            raise CheckpointError(
                f"checkpoint step {step} in {str(self.directory)!r} holds state.step {int(jax.device_get(state.step))}"
            )
        return state, dict(loader_state or {})

    def restore_latest(
        self,
        template: TrainState,
        warn: Callable[[str], None] = print,
    ) -> tuple[TrainState, dict, int] | None:
        """The newest step that restores, as `(state, loader_state, step)`; None without any step.

        Steps that fail to restore are reported with `warn` and moved aside (see the module docstring);
        CheckpointError when there are steps but none restores."""
        self.wait()
        reasons = []
        for step in reversed(self.all_steps()):
            try:
                state, loader_state = self.restore(template, step)
            except CheckpointError as e:
                reasons.append(f"step {step}: {e}")
                warn(f"skipping checkpoint {self.directory / str(step)}: it does not restore ({e})")
                self._move_aside(step)
                continue
            return state, loader_state, step
        if reasons:
            raise CheckpointError(f"no checkpoint in {str(self.directory)!r} restores:\n  " + "\n  ".join(reasons))
        return None

    def _move_aside(self, step: int) -> None:
        if jax.process_index() != 0:
            return
        src = self.directory / str(step)
        dst = self.directory / f"{step}.corrupt"
        n = 1
        while dst.exists():
            dst, n = self.directory / f"{step}.corrupt{n}", n + 1
        try:
            src.rename(dst)
        except OSError:
            pass
        self._manager.reload()

    def wait(self) -> None:
        """Block until pending asynchronous saves are written."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_init_params(path: str | os.PathLike, fresh: Any) -> tuple[Any, list[str]]:
    """Overlay parameters from `path` onto `fresh` (same key layout); returns (params, notes).

    `path`: an official `.npz`, or an earlier run's output or checkpoint folder (its latest checkpoint's
    EMA parameters). Keys absent from the file keep their fresh initialisation (e.g. the pTM head when
    fine-tuning from initial-training parameters); keys of the file the model lacks are ignored (both
    noted); shapes must agree (`ParamsError` listing the mismatches)."""
    import numpy as np  # noqa: PLC0415

    from jaxfold.weights import ROOT_SCOPE, ParamsError, flat_to_tree, read_npz, tree_to_flat  # noqa: PLC0415

    path = Path(path)
    fresh_flat = tree_to_flat(jax.device_get(fresh))
    if path.is_dir():
        ckpt_dir = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        mgr = CheckpointManager(ckpt_dir, create=False)
        step = mgr.latest_step()
        mgr.close()
        if step is None:
            raise ParamsError(f"--init-params {str(path)!r}: no checkpoint in {str(ckpt_dir)!r}")
        raw = ocp.StandardCheckpointer().restore(ckpt_dir / str(step) / "state")
        ema = raw["ema_params"] if isinstance(raw, dict) else raw.ema_params
        flat = {k: np.asarray(v) for k, v in tree_to_flat(ema).items()}
    else:
        flat = {k.split("/", 1)[1] if k.startswith(ROOT_SCOPE + "/") else k: v for k, v in read_npz(path).items()}
    bad = [
        f"{k}: file {flat[k].shape} vs model {fresh_flat[k].shape}"
        for k in flat
        if k in fresh_flat and tuple(flat[k].shape) != tuple(fresh_flat[k].shape)
    ]
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
    return flat_to_tree(merged), notes
