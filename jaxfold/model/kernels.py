"""The one switch between the fused Pallas kernels and plain XLA.

`global_config.kernels` is `"auto"`, `"xla"` or `"pallas"`. `resolve_kernels` turns it into a concrete
choice once (auto: Pallas on a GPU backend, XLA elsewhere, where Pallas would only run in the slow
interpreter); modules call the kernel entry points (`attention.attention_core`, `primitives.layer_norm`,
the triangle multiplication), which ask this module and nothing else. Anything else is a ValueError.
"""

from __future__ import annotations

import jax

KERNELS = ("auto", "xla", "pallas")


def resolve_kernels(kernels: str, backend: str | None = None) -> str:
    """`"auto" | "xla" | "pallas"` -> `"xla" | "pallas"`; `backend` defaults to JAX's default backend."""
    if kernels not in KERNELS:
        raise ValueError(f"unknown kernels {kernels!r}: expected one of {', '.join(map(repr, KERNELS))}")
    if kernels != "auto":
        return kernels
    backend = backend or jax.default_backend()
    return "pallas" if backend in ("gpu", "cuda", "rocm") else "xla"


def use_pallas(kernels: str) -> bool:
    """Whether the fused Pallas kernels serve this call."""
    return resolve_kernels(kernels) == "pallas"
