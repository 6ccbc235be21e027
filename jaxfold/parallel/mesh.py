"""Device meshes for jaxfold: `dap` (dynamic axial parallelism inside one protein) x `data` (batch).

`make_mesh("8x64")` or `make_mesh("dap=8,data=64")` -> a `jax.sharding.Mesh` with axes ('dap', 'data').
The product must equal the number of devices. Multi-host runs call `jax.distributed.initialize()` first
(`initialize_distributed()` does so when a cluster launcher's environment is present).
"""

from __future__ import annotations

import os
import re

import jax
import numpy as np
from jax.sharding import Mesh

from jaxfold.parallel.dap import NO_DAP, Dap

AXES = ("dap", "data")


class MeshError(ValueError):
    """A mesh specification that is malformed or does not fit the devices."""


def parse_mesh_spec(spec: str) -> dict[str, int]:
    """`"8x64"` or `"dap=8,data=64"` (either order, missing axis = 1) -> `{'dap': 8, 'data': 64}`."""
    text = spec.strip().lower().replace(" ", "")
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if match:
        sizes = {"dap": int(match.group(1)), "data": int(match.group(2))}
    elif re.fullmatch(r"[a-z]+=\d+(,[a-z]+=\d+)*", text):
        sizes = {"dap": 1, "data": 1}
        for item in text.split(","):
            name, value = item.split("=")
            if name not in AXES:
                raise MeshError(f"mesh spec {spec!r}: unknown axis {name!r} (axes are 'dap' and 'data')")
            sizes[name] = int(value)
    else:
        raise MeshError(f"mesh spec {spec!r} is not 'DAPxDATA' (e.g. '8x64') or 'dap=8,data=64'")
    if any(v < 1 for v in sizes.values()):
        raise MeshError(f"mesh spec {spec!r}: axis sizes must be >= 1")
    return sizes


def make_mesh(spec: str, devices=None) -> Mesh:
    """A ('dap', 'data') mesh over `devices` (default: all); the product must equal the device count."""
    sizes = parse_mesh_spec(spec)
    devices = list(jax.devices() if devices is None else devices)
    total = sizes["dap"] * sizes["data"]
    if total != len(devices):
        raise MeshError(
            f"mesh {spec!r} needs dap {sizes['dap']} x data {sizes['data']} = {total} devices, "
            f"but {len(devices)} are available"
        )
    # dap is the inner (fastest-varying) axis: its all-to-alls stay within neighbouring devices (one host).
    grid = np.asarray(devices, dtype=object).reshape(sizes["data"], sizes["dap"]).T
    return Mesh(grid, AXES)


def prediction_mesh(spec: str | None, devices=None) -> Mesh | None:
    """The mesh of one prediction (`--mesh DAPx1`): DAP over the first DAP local devices; None for `1x1`/None.

    A prediction is one example, so the `data` axis must be 1; DAP may use fewer devices than there are.
    """
    if not spec:
        return None
    sizes = parse_mesh_spec(spec)
    if sizes["data"] != 1:
        raise MeshError(
            f"mesh {spec!r}: a prediction splits one chain over devices with DAP, so the data axis "
            f"must be 1 (e.g. '{sizes['dap'] * sizes['data']}x1')"
        )
    devices = list(jax.local_devices() if devices is None else devices)
    if sizes["dap"] > len(devices):
        raise MeshError(
            f"mesh {spec!r} needs {sizes['dap']} devices, but {len(devices)} are available ({devices[0].platform})"
        )
    if sizes["dap"] == 1:
        return None
    return make_mesh(f"{sizes['dap']}x1", devices[: sizes["dap"]])


def dap_for_mesh(mesh: Mesh | None) -> Dap:
    """The `Dap` helper for a mesh's `dap` axis (the identity when absent or of size 1)."""
    if mesh is None or "dap" not in mesh.axis_names or mesh.shape["dap"] == 1:
        return NO_DAP
    return Dap("dap", int(mesh.shape["dap"]))


def initialize_distributed() -> bool:
    """`jax.distributed.initialize()` when started under a cluster launcher; True if it did."""
    markers = ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES")
    if any(os.environ.get(m) for m in markers) and not jax.distributed.is_initialized():
        jax.distributed.initialize()
        return True
    return False
