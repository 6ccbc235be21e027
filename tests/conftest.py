"""Shared pytest fixtures for jaxfold tests."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

# The suite runs on small CPU shapes where XLA's compile time dominates; the backend's optimisation passes
# roughly halve it and cost nothing that the tests measure (tolerances are set by the references, not by
# speed). Set before jax is imported by any test module.
# Eight virtual CPU devices let the DAP tests run shard_map code; single-device code still uses device 0.
_FLAGS = ["--xla_backend_optimization_level=0", "--xla_force_host_platform_device_count=8"]
# The virtual devices' collectives meet in a rendezvous that XLA aborts after 40 s; on a loaded 2-core machine a
# device thread can lag that long, so allow 10 minutes (flags checked to exist in jaxlib 0.10; an unknown flag is
# fatal to XLA, so they are added only there and later).
try:
    from importlib.metadata import version as _version

    if tuple(int(p) for p in _version("jaxlib").split(".")[:2]) >= (0, 10):
        _FLAGS += [
            "--xla_cpu_collective_call_terminate_timeout_seconds=600",
            "--xla_cpu_collective_timeout_seconds=600",
        ]
except Exception:  # noqa: BLE001  (no jaxlib metadata: keep XLA's defaults)
    pass
for flag in _FLAGS:
    if flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
# The commands the tests start (infer.py, train.py) write no compiled programs into the user's
# ~/.cache/jaxfold unless a test gives them a folder of its own.
os.environ.setdefault("JAXFOLD_COMPILATION_CACHE", "")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """Root of the shared test data (``shared/`` next to the repository).

    Taken from ``$JAXFOLD_SHARED`` if set, otherwise ``<repo>/../shared``.
    Tests that need it are skipped, not failed, when it is absent so the
    suite still runs on a bare checkout.
    """
    env = os.environ.get("JAXFOLD_SHARED")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared"
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"shared data directory not found at {path}: CI must run with shared/ beside the clone")
        pytest.skip(
            f"shared data directory not found at {path} (set JAXFOLD_SHARED to the folder holding data/structures)"
        )
    return path


@pytest.fixture
def ieee_fp32_dots():
    """IEEE float32 dots for kernel and reference alike (the Pallas tests). No-op on CPU; on a GPU it keeps
    TF32 out of both (Triton and XLA default to TF32 for float32 there), so float32 tolerances also hold when
    those tests run on a GPU, where the kernels are compiled instead of interpreted."""
    import jax  # noqa: PLC0415  (conftest sets XLA_FLAGS before jax is imported)

    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="module")
def multimer_reference(shared_dir):
    """Loader of shared/reference_multimer module references: `load(name) -> (io, params)` (parameters sliced
    from the full official-format file as the manifest's `param_map` says)."""
    from jaxfold.weights import flat_to_tree, read_npz  # noqa: PLC0415  (after XLA_FLAGS are set, above)

    base = shared_dir / "reference_multimer"
    if not base.is_dir():
        pytest.skip("shared/reference_multimer not available")
    manifest = json.loads((base / "manifest.json").read_text())
    full = read_npz(base / manifest["params_file"])

    def load(name: str) -> tuple[dict, dict]:
        with np.load(base / "modules" / f"{name}.npz") as data:
            io = {k: data[k] for k in data.files}
        flat = {}
        for key, (full_key, layer) in manifest["modules"][name]["param_map"].items():
            value = full[full_key]
            flat[key] = value if layer is None else value[layer]
        return io, flat_to_tree(flat)

    return load
