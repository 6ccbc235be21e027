"""The run's metrics log: `<output-dir>/metrics.jsonl` (one JSON object per line, `{"step": n, ...}`) and,
when `tensorboardX` is installed, TensorBoard scalars under `<output-dir>/tensorboard`.

    log = MetricsLog(out_dir, enabled=jax.process_index() == 0)
    log.truncate_after(restored_step)     # on resume: drop what the killed run logged past its checkpoint
    log.record(step, {"loss": 1.2, ...})
    log.close()

A run killed after step 8 whose last checkpoint is step 3 resumes at step 4: without the truncation
the file would read steps 1..8, 4..10. `truncate_after` rewrites the file atomically (a temporary file
renamed over it), so a crash during the rewrite leaves the old or the new file, never half of one.
TensorBoard's event files are append-only: the resumed run's writer is opened with `purge_step`,
which tells TensorBoard to discard the earlier events from that step on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog", "truncate_jsonl_after"]


def truncate_jsonl_after(path: str | os.PathLike, step: int) -> int:
    """Drop the records of `path` whose `step` is > `step` (atomically); returns how many were dropped.
    A missing file is left missing; a torn last line (the writer was killed mid-write) is dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if int(record.get("step", 0)) > step:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            f.write("".join(line + "\n" for line in kept))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return dropped


class MetricsLog:
    """Appends step records to `metrics.jsonl` (+ TensorBoard); a no-op when not `enabled` (other
    processes of a multi-process run)."""

    def __init__(self, directory: str | os.PathLike, *, enabled: bool = True, tensorboard: bool = True):
        self.path = Path(directory) / "metrics.jsonl"
        self.enabled = enabled
        self._tb_dir = Path(directory) / "tensorboard" if tensorboard else None
        self._writer = None
        self._purge_step: int | None = None

    def truncate_after(self, step: int) -> int:
        """Forget records past `step` (see the module docstring); returns how many were dropped."""
        if not self.enabled:
            return 0
        self._purge_step = step + 1
        return truncate_jsonl_after(self.path, step)

    def _tensorboard(self):
        if self._writer is None and self._tb_dir is not None:
            try:
                from tensorboardX import SummaryWriter  # noqa: PLC0415
            except ImportError:
                self._tb_dir = None
                return None
            self._writer = SummaryWriter(str(self._tb_dir), purge_step=self._purge_step)
        return self._writer

    def record(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": int(step), **metrics}) + "\n")
        writer = self._tensorboard()
        if writer is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
