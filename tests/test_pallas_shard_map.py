"""The Pallas kernels inside `jax.shard_map(check_vma=True)`, as DAP runs them (`pallas_kernels/_vma.py`).

Each kernel gets activations split over a 2-device `dap` axis and parameters replicated, exactly as the DAP
stacks call them; its value and every gradient (training) must equal the same kernel run unsplit, to fp32
summation order (the replicated parameters' gradients are the sum of the devices' partial gradients, which
the cast in `_vma.match_vma` turns into a psum). Interpret mode on the CPU; a second test lowers the compiled
(Triton) path for CUDA under a 2-GPU abstract mesh, which is what the GPU runs.

Before `_vma.py` every case failed while tracing: "When `check_vma=True` on `jax.shard_map`,
`manual_axis_type` on `jax.ShapeDtypeStruct` must not be `None`" (jax 0.10.2).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxfold.parallel.dap import Dap
from jaxfold.parallel.mesh import make_mesh
from pallas_kernels import _vma
from pallas_kernels import attention as pattn
from pallas_kernels import layer_norm as pln
from pallas_kernels import transition as ptr
from pallas_kernels import triangle_multiplication as ptm

pytestmark = [
    pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated"),
    pytest.mark.usefixtures("ieee_fp32_dots"),
]

DAP = 2


def _normal(seed, *shapes):
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    return [jax.random.normal(k, s) for k, s in zip(keys, shapes)]


def _case(name: str):
    """(kernel(split, replicated, interpret) -> output, split arrays (row 0 split over dap), replicated arrays).

    Shapes are small and deliberately not powers of two (the kernels pad/mask inside)."""
    if name == "layer_norm":
        x, scale, offset = _normal(0, (8, 6, 40), (40,), (40,))
        return (lambda s, r, i: pln.layer_norm(*s, *r, interpret=i)), (x,), (1.0 + 0.1 * scale, 0.1 * offset)
    if name == "attention":
        # MSA row attention under DAP: rows split; the pair bias [H, Q, K] replicated on every device.
        q, k, v, pair = _normal(1, (4, 12, 2, 8), (4, 12, 2, 8), (4, 12, 2, 8), (2, 12, 12))
        keep = (jax.random.uniform(jax.random.key(2), (4, 12)) > 0.3).at[:, 0].set(True)
        bias = (1e9 * (keep.astype(jnp.float32) - 1.0))[:, None, None, :]

        def run(s, r, i):
            q, k, v, bias = s
            return pattn.attention(q * 8**-0.5, k, v, bias, r[0], interpret=i)

        return run, (q, k, v, bias), (pair,)
    if name == "triangle_multiplication":
        # outgoing under DAP: left operand and gate on this device's rows, the right operand whole (gathered).
        left, gate, right, wo, wg = _normal(3, (6, 10, 8), (6, 10, 12), (10, 10, 8), (8, 12), (12, 12))
        scale, offset, bo, bg = _normal(4, (8,), (8,), (12,), (12,))

        def run(s, r, i):
            left, gate = s
            right, scale, offset, wo, bo, wg, bg = r
            return ptm.triangle_multiplication(
                left, right, gate, scale, offset, wo, bo, wg, bg, outgoing=True, interpret=i
            )

        return run, (left, gate), (right, 1.0 + 0.1 * scale, 0.1 * offset, wo / 3, 0.1 * bo, wg / 3, 0.1 * bg)
    if name == "transition":
        x, scale, offset, w1, b1, w2, b2 = _normal(5, (6, 5, 24), (24,), (24,), (24, 40), (40,), (40, 24), (24,))
        weights = (1.0 + 0.1 * scale, 0.1 * offset, w1 / 5, 0.1 * b1, w2 / 6, 0.1 * b2)
        return (lambda s, r, i: ptr.transition(*s, *r, interpret=i)), (x,), weights
    raise KeyError(name)


KERNELS = ("layer_norm", "attention", "triangle_multiplication", "transition")


def _loss(run, interpret: bool, mesh=None):
    """sum(sin(kernel)) over the whole output: on one device, or with the split arrays split over `dap`
    (each device its rows, the partial sums psum-ed, as the model's DAP loss is)."""
    dap = Dap("dap", DAP) if mesh is not None else Dap()

    def local(split, replicated):
        out = run(tuple(dap.scatter(x, 0) for x in split), replicated, interpret)
        total = jnp.sum(jnp.sin(out.astype(jnp.float32)))
        return jax.lax.psum(total, "dap") if dap.enabled else total

    if mesh is None:
        return local
    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P()), out_specs=P())


def test_vma_helpers_are_the_identity_outside_shard_map():
    x, y = jnp.ones((3, 4)), jnp.zeros(4)
    assert _vma.varying_axes(x) == frozenset()
    a, b, none = _vma.match_vma(x, y, None)
    assert a is x and b is y and none is None


def test_match_vma_casts_to_the_union_and_its_gradient_sums_over_devices():
    """A replicated scale used with a DAP slice: cast to varying, and its gradient is summed over devices."""
    mesh = make_mesh(f"{DAP}x1", jax.devices()[:DAP])

    def body(x, scale):
        local = Dap("dap", DAP).scatter(x, 0)
        local, scale_v = _vma.match_vma(local, scale)
        assert _vma.varying_axes(local) == {"dap"} and _vma.varying_axes(scale_v) == {"dap"}
        assert _vma.varying_axes(scale) == frozenset()
        return jax.lax.psum(jnp.sum(local * scale_v), "dap")

    f = jax.shard_map(body, mesh=mesh, in_specs=(P(), P()), out_specs=P())
    x = jnp.arange(12.0).reshape(4, 3)
    grad = jax.jit(jax.grad(f, argnums=1))(x, jnp.ones(3))
    np.testing.assert_allclose(grad, x.sum(0))


@pytest.mark.parametrize("name", KERNELS)
def test_kernel_under_shard_map_equals_unsplit_values_and_gradients(name):
    run, split, replicated = _case(name)
    mesh = make_mesh(f"{DAP}x1", jax.devices()[:DAP])
    grad = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1)))  # noqa: E731
    value, grads = grad(_loss(run, True, mesh))(split, replicated)
    ref_value, ref_grads = grad(_loss(run, True))(split, replicated)
    # A sum of ~1k terms of either sign, added in another order: absolute round-off.
    np.testing.assert_allclose(value, ref_value, atol=1e-4)
    leaves, ref_leaves = jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)
    assert len(leaves) == len(split) + len(replicated)
    for i, (g, r) in enumerate(zip(leaves, ref_leaves)):
        scale = float(jnp.abs(r).max())
        if name == "attention" and i == 3:  # the key-mask bias: no gradient by design (stop_gradient)
            assert scale == 0.0 and float(jnp.abs(g).max()) == 0.0
            continue
        assert scale > 0, f"{name}: gradient {i} is zero, the test would not see it"
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * scale, err_msg=f"{name} gradient {i}")


def _gpu_mesh_context(size: int):
    """(abstract `dap` mesh of `size` GPUs, context that makes it current), or None where jax has no abstract
    devices; lowering for CUDA needs an abstract GPU mesh on a machine without a GPU."""
    abstract_device = getattr(jax.sharding, "AbstractDevice", None)
    if abstract_device is None or not hasattr(jax.sharding, "use_abstract_mesh"):
        return None
    try:
        dev = abstract_device(device_kind="NVIDIA H200", num_cores=132, platform="gpu")
        mesh = jax.sharding.AbstractMesh((size,), ("dap",), abstract_device=dev)
    except TypeError:
        return None
    return mesh, jax.sharding.use_abstract_mesh(mesh)


# Triton kernels per forward + backward: attention fwd, dk/dv, dq, dpair; LayerNorm fwd, bwd; triangle
# product fwd + 2 backward products + epilogue fwd (its backward is XLA); transition fwd (backward XLA).
TRITON_CALLS = {"layer_norm": 2, "attention": 4, "triangle_multiplication": 4, "transition": 1}


@pytest.mark.parametrize("name", KERNELS)
def test_kernel_under_shard_map_lowers_for_cuda(name):
    """The GPU path (compiled Triton kernels, not the interpreter) type-checks and lowers under DAP."""
    gpu = _gpu_mesh_context(DAP)
    if gpu is None:
        pytest.skip(f"jax {jax.__version__} has no abstract GPU devices to lower for")
    mesh, context = gpu
    run, split, replicated = _case(name)
    fn = jax.jit(jax.value_and_grad(_loss(run, False, mesh), argnums=(0, 1)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with context:
            text = fn.trace(split, replicated).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("__gpu$xla.gpu.triton") == TRITON_CALLS[name]
