"""Small compatibility shim over the Pallas GPU (Triton) API across JAX versions.

Everything version-dependent that the kernels touch lives here, so the kernels themselves read the same
on jax 0.10 and 0.11:

* `compiler_params(num_warps, num_stages)`: `plgpu.CompilerParams` (jax >= 0.5), else the older
  `plgpu.TritonCompilerParams`, else the oldest `dict(triton=dict(...))` form.
* `load` / `store`: masked loads and stores (`plgpu.load/store`; `pl.load/store` on old versions, which
  0.10 no longer exports).
* `dot`: a 2-D matmul with fp32 accumulation written with `lax.dot_general` (`pl.dot` is deprecated in
  0.10/0.11 and removed in 0.12; `plgpu.dot` is itself a thin wrapper over `lax.dot_general`).
* `cuda_lowering_context()`: jax >= 0.11 asks for an abstract GPU device to lower a Triton kernel on a
  machine without a GPU (it reads the compute capability from it); 0.10 falls back to sm_90 on its own.
* The jax 0.11 "Pallas Triton backend is deprecated" warning is silenced (once, narrowly, by message)
  unless `JAXFOLD_SHOW_TRITON_DEPRECATION=1`; Mosaic GPU is the successor backend (see README notes in
  the report), the Triton path is what these kernels target today.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

try:  # GPU (Triton) specific Pallas API.
    from jax.experimental.pallas import triton as plgpu
except ImportError:  # pragma: no cover - very old jax
    plgpu = None

if os.environ.get("JAXFOLD_SHOW_TRITON_DEPRECATION", "0") != "1":
    warnings.filterwarnings("ignore", message=r"The Pallas Triton backend is deprecated")

ds = pl.ds
cdiv = pl.cdiv


def on_gpu() -> bool:
    """True when JAX's default backend is a GPU (CUDA or ROCm)."""
    return jax.default_backend() in ("gpu", "cuda", "rocm")


def resolve_interpret(interpret: bool | None) -> bool:
    """`None` -> interpret everywhere except on a GPU backend."""
    return (not on_gpu()) if interpret is None else bool(interpret)


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def compiler_params(num_warps: int | None = None, num_stages: int | None = None):
    """Triton compiler parameters in whatever form this jax version accepts."""
    if plgpu is not None:
        cls = getattr(plgpu, "CompilerParams", None) or getattr(plgpu, "TritonCompilerParams", None)
        if cls is not None:
            return cls(num_warps=num_warps, num_stages=num_stages)
    return dict(triton=dict(num_warps=num_warps, num_stages=num_stages))


def _mem_op(name: str):
    for mod in (plgpu, pl):
        fn = getattr(mod, name, None) if mod is not None else None
        if fn is not None:
            return fn
    raise ImportError(f"no Pallas `{name}` in jax {jax.__version__}")


_load = _mem_op("load")
_store = _mem_op("store")


def load(ref, *, mask=None, other=None):
    """Masked load of a whole (sub)ref: masked-off lanes read `other` (no memory access)."""
    if mask is None:
        return ref[...]
    return _load(ref, mask=mask, other=other)


def store(ref, value, *, mask=None):
    if mask is None:
        ref[...] = value
        return
    _store(ref, value, mask=mask)


def dot(a, b, *, trans_a: bool = False, trans_b: bool = False, precision=None):
    """2-D matmul `op(a) @ op(b)` with float32 accumulation (maps to `tt.dot` in the Triton lowering).

    `precision=None` keeps Triton's default (TF32 for float32 inputs, like XLA's default on GPU);
    `lax.Precision.HIGHEST` asks for IEEE float32.
    """
    dims = (((0 if trans_a else 1,), (1 if trans_b else 0,)), ((), ()))
    return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)


def matmul_precision(dtype, allow_tf32: bool | None):
    """Dot precision for the kernels: only matters for float32 operands.

    allow_tf32=None follows `jax_default_matmul_precision` (unset/'default'/'tensorfloat32'/'bfloat16'
    -> TF32, i.e. what XLA does by default on Ampere+; 'highest'/'float32' -> IEEE float32).
    """
    if jnp.dtype(dtype) != jnp.float32:
        return None
    if allow_tf32 is None:
        cfg = jax.config.jax_default_matmul_precision
        allow_tf32 = cfg is None or str(cfg).lower() not in ("highest", "float32", "precision.highest")
    return None if allow_tf32 else lax.Precision.HIGHEST


def cuda_lowering_context(device_kind: str = "NVIDIA H200", num_cores: int = 132):
    """Context under which `jit(f).trace(...).lower(lowering_platforms=('cuda',))` works without a GPU.

    jax >= 0.11 reads the target GPU from an abstract mesh's abstract device; earlier versions fall back to
    compute capability 9.0 by themselves, so a null context is returned there.
    """
    abstract_device = getattr(jax.sharding, "AbstractDevice", None)
    use_abstract_mesh = getattr(jax.sharding, "use_abstract_mesh", None)
    if abstract_device is None or use_abstract_mesh is None:
        return contextlib.nullcontext()
    try:
        dev = abstract_device(device_kind=device_kind, num_cores=num_cores, platform="gpu")
        mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=dev)
    except TypeError:  # AbstractDevice/AbstractMesh exist but without these fields: nothing to set
        return contextlib.nullcontext()
    return use_abstract_mesh(mesh)
