"""Fused Pallas (Triton) GPU kernels for jaxfold: attention, LayerNorm, triangle multiplication.

Import the submodules directly (`from pallas_kernels import attention, layer_norm, triangle_multiplication`);
this package init is kept free of heavy imports so importing `pallas_kernels` costs nothing when the kernels
are unused.

* `pallas_kernels.attention.attention(q, k, v, bias, nonbatched_bias=None)`: flash-style attention with
  AlphaFold's key-mask bias and a pair bias shared over the batch rows, with a Pallas backward.
* `pallas_kernels.layer_norm.layer_norm(x, scale, offset, eps)`: last-axis LayerNorm, forward and backward.
* `pallas_kernels.triangle_multiplication.triangle_multiplication(left, right, gate_input, ...)`: the
  triangle product (outgoing/incoming) fused with the center LayerNorm, output projection and gate.

On a CPU backend the kernels run in Pallas interpret mode (slow, for tests); on a GPU they compile
through Triton. Inside `jax.shard_map` (DAP) every kernel's outputs vary over the mesh axes its inputs
vary over (`_vma.py`), so they type-check under `check_vma=True`, forward and backward.
"""

__all__ = ["attention", "layer_norm", "triangle_multiplication"]
