"""JAX's persistent compilation cache for the commands (`infer.py`, `train.py`): one folder, one switch.

A later run with the same programs (a resumed training run, a second prediction of the same shapes) loads
the compiled executables instead of compiling again: minutes for a full-size training step.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DIR = Path.home() / ".cache" / "jaxfold" / "xla"
# Programs that compile faster than this are not worth a file.
MIN_COMPILE_SECONDS = 1.0


def default_cache_dir() -> str:
    """$JAXFOLD_COMPILATION_CACHE, else ~/.cache/jaxfold/xla."""
    return os.environ.get("JAXFOLD_COMPILATION_CACHE", str(DEFAULT_DIR))


def enable_compilation_cache(path: str | os.PathLike | None) -> str | None:
    """Use `path` (created if missing) as JAX's persistent compilation cache; None or "" leaves it off.

    Returns a warning to show when the folder cannot be used (the run goes on without a cache), else None.
    """
    if not path:
        return None
    import jax  # noqa: PLC0415  (the commands import jax late, after their argument checks)

    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"compilation cache disabled ({path}: {e.strerror})"
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return None
