"""Non-blocking, resumable multi-process batch loader (ScaleFold-style).

:class:`Loader` asks ``dataset.sample(k, seed)`` for global sample positions
``k = 0, 1, 2, ...`` in worker processes (``ProcessPoolExecutor``, spawn context), keeps up
to ``queue_size`` samples in flight and yields a batch as soon as ``batch_size`` samples
are READY, in whatever order they finish: one slow sample never stalls a step, it just
lands in a later batch. The sample for position ``k`` is a pure function of
``(seed, k)``, so the multiset of samples over a range of positions does not depend on
the number of workers or on timing; only their grouping into batches does.

Resumption: :meth:`Loader.state_dict` records the first position never issued and the
issued-but-not-yielded ("pending") positions; :meth:`Loader.from_state` re-issues the
pending ones first, so a resumed run neither repeats nor skips a sample.

Multi-process runs: :class:`ProcessShard` gives each process its slice of every global batch
(global batch ``i`` = positions ``[i * B, (i + 1) * B)``; process ``p`` of ``P`` loads rows
``[p * B / P, (p + 1) * B / P)`` of it), so every example is loaded exactly once and the global
batch is the one a single process would load.

Workers exit when their parent dies (``kill -9`` included): a parent-death signal on Linux and,
everywhere, a thread that watches the parent's pid.
"""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["Loader", "LoaderError", "ProcessShard", "stack_samples"]


class LoaderError(RuntimeError):
    """A sample could not be prepared; the message names the sample position."""


# ---------------------------------------------------------------------------------------
# Worker side.
# ---------------------------------------------------------------------------------------
_WORKER_DATASET: Any = None


def _exit_with_parent(parent_pid: int, poll_s: float = 0.5) -> None:
    """Make this worker die when `parent_pid` does: a worker left behind by a `kill -9` of the
    training process would otherwise keep its dataset (hundreds of MB) and the resource tracker alive."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes  # noqa: PLC0415

            pr_set_pdeathsig = 1
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL))
        except (OSError, AttributeError):
            pass

    # The signal fires when the parent *thread* that spawned us exits, and is Linux-only: also watch
    # the pid (re-parenting changes getppid()).
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os._exit(1)

    if os.getppid() != parent_pid:  # the parent died before we got here
        os._exit(1)
    threading.Thread(target=watch, name="jaxfold-loader-parent-watch", daemon=True).start()


def _init_worker(dataset: Any, env: Mapping[str, str], parent_pid: int | None = None) -> None:
    global _WORKER_DATASET  # noqa: PLW0603
    if parent_pid is not None:
        _exit_with_parent(parent_pid)
    os.environ.update(env)
    _WORKER_DATASET = dataset


def _describe(dataset: Any, position: int, seed: int) -> str:
    chain_for = getattr(dataset, "chain_for", None)
    if chain_for is None:
        return ""
    try:
        return f", chain {chain_for(position, seed)}"
    except Exception:  # noqa: BLE001
        return ""


def _make_sample(dataset: Any, position: int, seed: int) -> dict[str, np.ndarray]:
    try:
        return dataset.sample(position, seed)
    except Exception as e:  # noqa: BLE001 -- re-raised, picklable, naming the sample
        raise LoaderError(
            f"sample at position {position} (seed {seed}{_describe(dataset, position, seed)}) "
            f"failed: {type(e).__name__}: {e}\n{traceback.format_exc()}"
        ) from None


def _work(position: int, seed: int):
    return position, _make_sample(_WORKER_DATASET, position, seed)


def stack_samples(samples: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """``[{k: array}]`` -> ``{k: array[batch, ...]}``; every sample needs the same keys and shapes."""
    keys = list(samples[0])
    out = {}
    for k in keys:
        try:
            out[k] = np.stack([np.asarray(s[k]) for s in samples])
        except (KeyError, ValueError) as e:
            shapes = [np.shape(s.get(k)) for s in samples]
            raise LoaderError(f"cannot batch feature {k!r}: shapes {shapes} ({e})") from None
    return out


class ProcessShard:
    """One process's share of a dataset's global batches (see the module docstring).

    Local position ``j`` (the ``j``-th sample this process loads) is global position
    ``(j // b) * B + p * b + j % b`` with ``b = B / P`` rows per process. ``sample(j, seed)`` is
    ``dataset.sample(global_position(j), seed)``, so a :class:`Loader` over it with batch ``b``
    yields this process's rows of each global batch, in order (``num_workers=0``) or in
    completion order.
    """

    def __init__(self, dataset: Any, global_batch_size: int, process_index: int, process_count: int):
        if process_count < 1 or not 0 <= process_index < process_count:
            raise ValueError(f"process {process_index} of {process_count}: out of range")
        if global_batch_size % process_count:
            raise ValueError(f"global batch {global_batch_size} is not divisible by the {process_count} processes")
        self.dataset = dataset
        self.global_batch_size = int(global_batch_size)
        self.process_index = int(process_index)
        self.process_count = int(process_count)
        self.local_batch_size = self.global_batch_size // self.process_count

    def global_position(self, position: int) -> int:
        step, row = divmod(int(position), self.local_batch_size)
        return step * self.global_batch_size + self.process_index * self.local_batch_size + row

    def sample(self, position: int, seed: int) -> dict[str, np.ndarray]:
        return self.dataset.sample(self.global_position(position), seed)

    def chain_for(self, position: int, seed: int | None = None) -> str:
        return self.dataset.chain_for(self.global_position(position), seed)

    def __len__(self) -> int:
        return len(self.dataset)


# ---------------------------------------------------------------------------------------
# Loader.
# ---------------------------------------------------------------------------------------
class Loader:
    """Batches of ``dataset.sample(k, seed)``, prepared by worker processes.

    Args:
      dataset: object with ``sample(position, seed) -> {name: array}`` (picklable when
        ``num_workers > 0``), e.g. :class:`jaxfold.data.dataset.TrainingDataset`.
      batch_size: samples per batch (stacked on a new leading axis).
      num_workers: worker processes; 0 prepares samples in the calling process, in order.
      seed: the run seed (sample ``k`` = ``dataset.sample(k, seed)``).
      queue_size: samples in flight or ready at most (default ``2 * batch_size *
        max(1, num_workers)``, at least ``batch_size``).
      start_step: first step; positions ``< start_step * batch_size`` count as consumed.
      num_steps: stop after this many batches (None: endless). The positions used are then
        exactly ``[start, start + num_steps * batch_size)`` (as a multiset).
      worker_env: environment for the workers (default ``JAX_PLATFORMS=cpu`` so a dataset
        that happens to import JAX never grabs an accelerator).

    Iterating yields ``{name: array[batch_size, ...]}`` plus ``sample_position``
    (int64 [batch_size]). Use as a context manager (or call :meth:`close`).
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        num_workers: int = 0,
        seed: int = 0,
        queue_size: int | None = None,
        start_step: int = 0,
        *,
        num_steps: int | None = None,
        worker_env: Mapping[str, str] | None = None,
        _pending: Sequence[int] = (),
        _next_position: int | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0; got {num_workers}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        if queue_size is None:
            queue_size = 2 * self.batch_size * max(1, self.num_workers)
        self.queue_size = max(int(queue_size), self.batch_size)
        self.step = int(start_step)
        self._end_step = None if num_steps is None else self.step + int(num_steps)
        self._next_position = self.step * self.batch_size if _next_position is None else int(_next_position)
        self._reissue: collections.deque = collections.deque(sorted(int(p) for p in _pending))
        self._pending: set = set(self._reissue)  # issued (or to re-issue), not yet yielded
        self._end_position = None if self._end_step is None else self._end_step * self.batch_size
        self._worker_env = dict({"JAX_PLATFORMS": "cpu"} if worker_env is None else worker_env)
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        self._futures: dict[concurrent.futures.Future, int] = {}
        self._ready: list[tuple] = []
        self._closed = False

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Resumable state after the batches yielded so far (plain ints and lists)."""
        return {
            "version": 1,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "step": self.step,
            "next_position": self._next_position,
            "pending": sorted(self._pending),
        }

    @classmethod
    def from_state(
        cls,
        dataset: Any,
        state: Mapping[str, Any],
        num_workers: int = 0,
        queue_size: int | None = None,
        *,
        num_steps: int | None = None,
        **kwargs: Any,
    ) -> Loader:
        """A loader continuing ``state``: pending positions are re-issued first, then
        ``next_position`` onwards. ``num_steps`` counts from the resumed step."""
        if int(state.get("version", 1)) != 1:
            raise ValueError(f"unknown loader state version {state.get('version')}")
        return cls(
            dataset,
            int(state["batch_size"]),
            num_workers,
            int(state["seed"]),
            queue_size,
            int(state["step"]),
            num_steps=num_steps,
            _pending=list(state["pending"]),
            _next_position=int(state["next_position"]),
            **kwargs,
        )

    # -- issuing --------------------------------------------------------------------------
    def _take_position(self) -> int | None:
        if self._reissue:
            return self._reissue.popleft()
        if self._end_position is not None and self._next_position >= self._end_position:
            return None
        p = self._next_position
        self._next_position += 1
        self._pending.add(p)
        return p

    def _ensure_executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._executor is None:
            ctx = multiprocessing.get_context("spawn")
            self._executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.num_workers,
                mp_context=ctx,
                initializer=_init_worker,
                initargs=(self.dataset, self._worker_env, os.getpid()),
            )
        return self._executor

    def _fill(self) -> None:
        ex = self._ensure_executor()
        while len(self._futures) + len(self._ready) < self.queue_size:
            p = self._take_position()
            if p is None:
                return
            self._futures[ex.submit(_work, p, self.seed)] = p

    def _collect(self) -> None:
        """Waits for at least one in-flight sample; moves finished ones to ``_ready``."""
        done, _ = concurrent.futures.wait(list(self._futures), return_when=concurrent.futures.FIRST_COMPLETED)
        # Keep completion order stable-ish: by position among those finishing together.
        for fut in sorted(done, key=lambda f: self._futures[f]):
            p = self._futures.pop(fut)
            try:
                _, sample = fut.result()
            except LoaderError as e:
                self.close()
                raise LoaderError(str(e)) from None
            except Exception as e:  # noqa: BLE001 (worker died, unpicklable result, ...)
                self.close()
                raise LoaderError(f"sample at position {p} (seed {self.seed}) failed: {type(e).__name__}: {e}") from e
            self._ready.append((p, sample))

    def _batch(self, items: list[tuple]) -> dict[str, np.ndarray]:
        batch = stack_samples([s for _, s in items])
        batch["sample_position"] = np.asarray([p for p, _ in items], np.int64)
        for p, _ in items:
            self._pending.discard(p)
        self.step += 1
        return batch

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        if self._closed:
            raise RuntimeError("Loader is closed")
        while self._end_step is None or self.step < self._end_step:
            if self.num_workers == 0:
                items = []
                while len(items) < self.batch_size:
                    p = self._take_position()
                    if p is None:
                        break
                    try:
                        sample = _make_sample(self.dataset, p, self.seed)
                    except LoaderError as e:
                        raise LoaderError(str(e)) from None
                    items.append((p, sample))
            else:
                self._fill()
                while len(self._ready) < self.batch_size and self._futures:
                    self._collect()
                    self._fill()
                items, self._ready = self._ready[: self.batch_size], self._ready[self.batch_size :]
            if len(items) < self.batch_size:  # positions exhausted (cannot happen with num_steps)
                return
            yield self._batch(items)

    # -- shutdown -------------------------------------------------------------------------
    def close(self) -> None:
        """Stops the workers (in-flight samples are dropped; they stay pending in
        :meth:`state_dict` and are re-issued on resume)."""
        self._closed = True
        ex, self._executor = self._executor, None
        if ex is None:
            return
        for fut in self._futures:
            fut.cancel()
        procs = list(getattr(ex, "_processes", {}).values())
        # shutdown(wait=False) forgets the executor's manager thread, and that thread also reaps the
        # workers (it sees the pool break when they are terminated): keep it to wait for it below, or
        # a worker it is still reaping outlives close() (a later shutdown(wait=True) could not join it).
        manager = getattr(ex, "_executor_manager_thread", None)
        ex.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        if manager is not None:
            manager.join(timeout=10)
        self._futures.clear()
        self._ready.clear()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
