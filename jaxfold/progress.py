"""Progress of a long run: a bar on a terminal, one timestamped line per stage elsewhere."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class Progress:
    """A tqdm bar over the stages of a run (preprocessing, compilation, recycles, writing).

    ``enabled=None`` shows the bar when the stream (stderr) is a terminal. Without a terminal (batch jobs,
    notebooks, CI logs) ``verbose=None`` prints one timestamped line per stage instead, so a long run
    still says what it is doing; ``enabled=False`` alone (``--no-progress``) is quiet. :meth:`stage`
    names what is running; :meth:`advance` counts finished steps; :meth:`add` grows the total.
    """

    def __init__(self, total: int = 0, enabled: bool | None = None, verbose: bool | None = None, stream=None):
        self._stream = stream or sys.stderr
        is_terminal = bool(getattr(self._stream, "isatty", lambda: False)())
        if verbose is None:
            verbose = enabled is None and not is_terminal
        if enabled is None:
            enabled = is_terminal
        self._bar = None
        self._verbose = verbose
        if enabled:
            self._bar = tqdm(
                total=total,
                file=self._stream,
                unit="step",
                dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]",
            )

    def stage(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_description_str(text, refresh=True)
        elif self._verbose:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            print(f"[{stamp}] {text}", file=self._stream, flush=True)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def add(self, n: int) -> None:
        if self._bar is not None and n:
            self._bar.total = (self._bar.total or 0) + n
            self._bar.refresh()

    def write(self, text: str) -> None:
        """A message that does not break the bar."""
        if self._bar is not None:
            self._bar.write(text, file=self._stream)
        else:
            print(text, file=self._stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


NO_PROGRESS = Progress(enabled=False, verbose=False)  # stateless when off: one shared instance
