"""Dynamic axial parallelism on 8 virtual CPU devices (XLA_FLAGS set in conftest.py): sharded == unsharded.

N_res (23 / 37) and N_seq (7 / 11 / 12) are not multiples of the DAP sizes, so padding is exercised.
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from reference_utils import SHRINK, assert_close_on, compare_all, module_reference, reference

from jaxfold.config import model_config
from jaxfold.model import run_alphafold
from jaxfold.model.evoformer import evoformer_stack
from jaxfold.model.stacks import apply_stack
from jaxfold.parallel.dap import NO_DAP, Dap
from jaxfold.parallel.mesh import MeshError, dap_for_mesh, make_mesh, parse_mesh_spec
from jaxfold.weights import load_alphafold_params

CONFIG = model_config("model_1_ptm")
EVO = CONFIG.model.embeddings_and_evoformer.evoformer
GC = CONFIG.model.global_config


def test_enough_virtual_devices():
    assert len(jax.devices()) >= 8, "conftest.py must force 8 host devices before jax initialises"


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("8x64", {"dap": 8, "data": 64}),
        ("2x1", {"dap": 2, "data": 1}),
        ("dap=8,data=64", {"dap": 8, "data": 64}),
        ("data=4", {"dap": 1, "data": 4}),
        (" DAP=2 , data=4 ", {"dap": 2, "data": 4}),
    ],
)
def test_mesh_spec_parsing(spec, expected):
    assert parse_mesh_spec(spec) == expected


@pytest.mark.parametrize("spec", ["8", "8x", "axb", "dap=2,model=4", "0x8", ""])
def test_malformed_mesh_spec_is_a_clear_error(spec):
    with pytest.raises(MeshError, match="mesh spec"):
        parse_mesh_spec(spec)


def test_mesh_that_does_not_fit_the_devices_names_both_numbers():
    with pytest.raises(MeshError, match=r"dap 4 x data 4 = 16 devices, but 8 are available"):
        make_mesh("4x4")
    mesh = make_mesh("dap=2,data=4")
    assert dict(mesh.shape) == {"dap": 2, "data": 4}
    assert dap_for_mesh(mesh) == Dap("dap", 2)
    assert dap_for_mesh(make_mesh("1x8")) == NO_DAP


def test_all_to_alls_switch_layouts_and_round_trip():
    mesh = make_mesh("8x1")
    dap = dap_for_mesh(mesh)
    x = jnp.arange(16 * 24 * 3, dtype=jnp.float32).reshape(16, 24, 3)

    def body(x):
        rows = dap.scatter(x, 0)
        cols = dap.row_to_col(rows)
        same_cols = dap.scatter(x, 1)
        back = dap.col_to_row(cols)
        return dap.gather_replicated(back, 0), jnp.max(jnp.abs(cols - same_cols))[None]

    full, diff = jax.shard_map(body, mesh=mesh, in_specs=P(), out_specs=(P(), P("dap")))(x)
    np.testing.assert_array_equal(full, x)
    assert float(jnp.max(diff)) == 0.0


class StackUnderTest(nn.Module):
    """A 2-block scanned Evoformer (or extra-MSA) stack with whole inputs and outputs."""

    dap: Dap
    is_extra_msa: bool
    kernels: str | None = None  # None: the preset's ("auto")

    @nn.compact
    def __call__(self, msa, pair, msa_mask, pair_mask):
        gc = GC if self.kernels is None else GC.replace(kernels=self.kernels)
        stack = evoformer_stack(EVO, gc, 2, self.is_extra_msa, False, name="stack", dap=self.dap)
        return apply_stack(stack, self.dap, msa, pair, msa_mask, pair_mask)


def stack_run(io, params, dap_size, is_extra_msa, kernels=None):
    mesh = make_mesh(f"{dap_size}x1", jax.devices()[:dap_size]) if dap_size > 1 else None
    module = StackUnderTest(dap_for_mesh(mesh), is_extra_msa, kernels)

    def forward(p, msa, pair):
        return module.apply({"params": p}, msa, pair, io["input/msa_mask"], io["input/pair_mask"])

    if mesh is not None:
        forward = jax.shard_map(forward, mesh=mesh, in_specs=(P(), P(), P()), out_specs=P())

    def loss(p, msa, pair):
        out_msa, out_pair = forward(p, msa, pair)
        # Masked so that padding and invalid positions (whose values AlphaFold leaves arbitrary) do not count.
        valid_msa = io["input/msa_mask"][..., None]
        valid_pair = io["input/pair_mask"][..., None]
        return jnp.sum(jnp.sin(out_msa) * valid_msa) + jnp.sum(out_pair**2 * valid_pair) * 1e-3, (out_msa, out_pair)

    grad_fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
    (_, outputs), grads = grad_fn(params, io["input/msa"], io["input/pair"])
    return outputs, grads


def assert_grads_close(grads, ref_grads):
    """Per leaf |g - g_ref| <= 1e-4 |g_ref|max + 1e-7 * (largest gradient anywhere).

    The second term covers leaves whose exact gradient is zero (e.g. a LayerNorm offset feeding a softmax
    bias, to which softmax is invariant): there both runs return round-off of ~1e-9.
    """
    leaves = jax.tree_util.tree_leaves_with_path(ref_grads)
    global_max = max(float(jnp.abs(g).max()) for _, g in leaves)
    for (path, ref), got in zip(leaves, jax.tree_util.tree_leaves(grads)):
        err = float(jnp.abs(got - ref).max())
        bound = 1e-4 * float(jnp.abs(ref).max()) + 1e-7 * global_max
        assert err <= bound, f"gradient {jax.tree_util.keystr(path)}: max err {err:.3g} > {bound:.3g}"


@pytest.fixture(scope="module")
def stack_reference(shared_dir):
    results = {}
    for name, is_extra in (("evoformer_iteration", False), ("extra_msa_stack_iteration", True)):
        io, params = module_reference(shared_dir, name)
        (scope,) = params
        two_blocks = jax.tree_util.tree_map(lambda x: np.stack([x, 0.5 * x[::-1] if x.ndim else x]), params[scope])
        io = {k: jnp.asarray(v) for k, v in io.items()}
        results[name] = (io, {"stack": two_blocks}, stack_run(io, {"stack": two_blocks}, 1, is_extra))
    return results


@pytest.mark.parametrize(
    "name,dap_size,kernels",
    [
        ("evoformer_iteration", 2, None),
        ("evoformer_iteration", 4, None),
        ("evoformer_iteration", 8, None),
        ("extra_msa_stack_iteration", 4, None),
        # The fused Pallas kernels (interpret mode here) inside shard_map, forward and backward (training).
        ("evoformer_iteration", 2, "pallas"),
        ("extra_msa_stack_iteration", 2, "pallas"),
    ],
)
def test_sharded_stack_equals_unsharded_values_and_gradients(stack_reference, name, dap_size, kernels):
    """The 2-block stack split over `dap_size` devices: outputs and gradients (parameters and inputs) equal
    the unsplit stack's (the preset's kernels: XLA on a CPU)."""
    io, params, (ref_out, ref_grads) = stack_reference[name]
    out, grads = stack_run(io, params, dap_size, name.startswith("extra"), kernels)
    msa_valid = io["input/msa_mask"][..., None] > 0
    pair_valid = io["input/pair_mask"][..., None] > 0
    for got, ref, valid in ((out[0], ref_out[0], msa_valid), (out[1], ref_out[1], pair_valid)):
        scale = float(jnp.abs(ref).max())
        assert_close_on(got, ref, valid, atol=1e-5 * scale, rtol=1e-5, what=f"{name} dap={dap_size}")
    assert_grads_close(grads, ref_grads)


@pytest.mark.parametrize(
    "dap_size,kernels",
    [
        (4, None),
        # ~75 s of Pallas interpret-mode compilation on 2 CPU cores; the fast sibling is
        # test_prediction_with_dap_and_pallas_kernels_equals_unsharded.
        pytest.param(2, "pallas", marks=pytest.mark.slow),
    ],
)
def test_whole_model_with_dap_matches_deepmind(shared_dir, dap_size, kernels):
    """The full model, trunk split over `dap_size` devices, against DeepMind's first-pass outputs."""
    cfg = model_config("model_1_ptm", num_recycle=0, **SHRINK)
    params = load_alphafold_params(shared_dir / "reference" / "params" / "params_model_1_ptm_shrunk.npz", cfg)
    features = {k: v[:1] for k, v in reference(shared_dir, "features").items()}
    mesh = make_mesh(f"{dap_size}x1", jax.devices()[:dap_size])
    outputs = run_alphafold(cfg, params, features, mesh=mesh, kernels=kernels)
    compare_all(outputs, reference(shared_dir, "outputs_recycle0"))


def test_prediction_with_dap_and_pallas_kernels_equals_unsharded(shared_dir, monkeypatch):
    """`predict(..., mesh=2x1, kernels="pallas")` (the fused kernels in interpret mode, inside shard_map)
    gives the unsplit XLA prediction: the tiny preset (1 Evoformer block, no templates) with random
    parameters whose output layers are not zero (`init_random_params`), so every kernel shapes the result,
    on the reference protein's real features (37 residues: odd, so DAP pads). The kernels must really run:
    the number of pallas_calls traced under the mesh is counted."""
    from jaxfold.model.predict import predict  # noqa: PLC0415
    from jaxfold.model_params import init_random_params  # noqa: PLC0415
    from pallas_kernels import _vma  # noqa: PLC0415

    calls = []
    traced = _vma.pallas_call
    monkeypatch.setattr(_vma, "pallas_call", lambda kernel, **kw: calls.append(kw.get("name")) or traced(kernel, **kw))
    cfg = model_config(
        "tiny", num_recycle=0, evoformer_num_block=1, **{"model.embeddings_and_evoformer.template.enabled": False}
    )
    params = init_random_params(cfg)
    features = {k: v[:1] for k, v in reference(shared_dir, "features").items()}
    expected = predict(cfg, params, features, kernels="xla")
    assert not calls
    outputs = predict(cfg, params, features, mesh=make_mesh("2x1", jax.devices()[:2]), kernels="pallas")
    for name in ("jaxfold_attention_fwd", "jaxfold_layer_norm_fwd", "jaxfold_triangle_product"):
        assert name in calls, f"{name} was not traced under the mesh: {sorted(set(calls))}"
    for key in ("representations/pair", "representations/msa", "distogram/logits", "masked_msa/logits"):
        scale = float(np.abs(expected[key]).max())
        assert_close_on(outputs[key], expected[key], None, atol=1e-5 * scale, rtol=1e-4, what=key)
    for key in ("structure_module/final_atom_positions", "confidence/plddt", "confidence/predicted_aligned_error"):
        assert_close_on(outputs[key], expected[key], None, atol=1e-3, rtol=1e-4, what=key)


def collective_counts(hlo_text: str) -> dict[str, int]:
    return {
        op: len(re.findall(rf"\b{op}\(", hlo_text))
        for op in ("all-to-all", "all-gather", "all-reduce", "reduce-scatter", "collective-permute")
    }


def test_one_sharded_block_has_exactly_the_planned_collectives(stack_reference):
    """DESIGN.md's plan per Evoformer block: 6 all-to-alls (2 MSA, 4 pair), 6 all-gathers (row-attention
    bias, outer-product right projection, the two triangle-multiplication operands, the two triangle-
    attention biases), nothing else; only the triangle operands are pair-sized."""
    io, params, _ = stack_reference["evoformer_iteration"]
    from jaxfold.model.evoformer import EvoformerIteration  # noqa: PLC0415

    mesh = make_mesh("4x1", jax.devices()[:4])
    block = EvoformerIteration(EVO, GC, dap=dap_for_mesh(mesh))
    one_layer = jax.tree_util.tree_map(lambda x: x[0], params["stack"])
    msa = jnp.zeros((8, 24, 256))
    pair = jnp.zeros((24, 24, 128))

    def body(p, msa, pair, msa_mask, pair_mask):
        (msa, pair), _ = block.apply({"params": p}, (msa, pair), msa_mask, pair_mask)
        return msa, pair

    sharded = jax.shard_map(
        body, mesh=mesh, in_specs=(P(), P("dap"), P("dap"), P(), P()), out_specs=(P("dap"), P("dap"))
    )
    compiled = jax.jit(sharded).lower(one_layer, msa, pair, jnp.ones((8, 24)), jnp.ones((24, 24))).compile()
    text = compiled.as_text()
    counts = collective_counts(text)
    assert counts == {
        "all-to-all": 6,
        "all-gather": 6,
        "all-reduce": 0,
        "reduce-scatter": 0,
        "collective-permute": 0,
    }, counts
    gathered = re.findall(r"= f32\[([\d,]+)\][^\n]*\ball-gather\(", text)
    pair_sized = [s for s in gathered if s.startswith("24,24,")]
    assert len(pair_sized) == 2, gathered  # the two triangle-multiplication operands, nothing else


def test_one_sharded_block_with_pallas_kernels_lowers_for_cuda(shared_dir, monkeypatch):
    """The GPU path of DAP with the fused kernels, on this CPU machine: one Evoformer block split over a
    2-GPU abstract mesh, forward and backward (training), lowers for CUDA with compiled Triton kernels (not
    the interpreter), and with exactly the kernels of the unsplit block (no kernel dropped under DAP)."""
    import warnings  # noqa: PLC0415

    from jaxfold.model.evoformer import EvoformerIteration  # noqa: PLC0415
    from pallas_kernels import _compat  # noqa: PLC0415

    abstract_device = getattr(jax.sharding, "AbstractDevice", None)
    if abstract_device is None or not hasattr(jax.sharding, "use_abstract_mesh"):
        pytest.skip(f"jax {jax.__version__} has no abstract GPU devices to lower for")
    monkeypatch.setattr(_compat, "on_gpu", lambda: True)  # the kernels compile (interpret=False) as on a GPU
    gpu = abstract_device(device_kind="NVIDIA H200", num_cores=132, platform="gpu")
    _, params = module_reference(shared_dir, "evoformer_iteration")
    (one_layer,) = params.values()
    gc = GC.replace(kernels="pallas")
    msa, pair = jnp.zeros((8, 24, 256)), jnp.zeros((24, 24, 128))
    msa_mask, pair_mask = jnp.ones((8, 24)), jnp.ones((24, 24))

    def lowered(dap_size):
        mesh = jax.sharding.AbstractMesh((dap_size,), ("dap",), abstract_device=gpu)
        block = EvoformerIteration(EVO, gc, dap=Dap("dap", dap_size) if dap_size > 1 else NO_DAP)

        def loss(p, msa, pair):
            (msa, pair), _ = block.apply({"params": p}, (msa, pair), msa_mask, pair_mask)
            total = jnp.sum(jnp.sin(msa)) + jnp.sum(pair**2)
            return jax.lax.psum(total, "dap") if dap_size > 1 else total

        if dap_size > 1:
            loss = jax.shard_map(loss, mesh=mesh, in_specs=(P(), P("dap"), P("dap")), out_specs=P())
        fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
        with warnings.catch_warnings(), jax.sharding.use_abstract_mesh(mesh):
            warnings.simplefilter("ignore", DeprecationWarning)
            return fn.trace(one_layer, msa, pair).lower(lowering_platforms=("cuda",)).as_text()

    sharded, whole = lowered(2), lowered(1)
    kernels = sharded.count("__gpu$xla.gpu.triton")
    # Per block, forward + backward: 4 attentions (3-4 kernels each), ~11 LayerNorms (2 each), 2 triangle
    # multiplications (4 each).
    assert kernels == whole.count("__gpu$xla.gpu.triton") and kernels >= 30, (kernels, whole.count("__gpu$xla"))
    assert "all_to_all" in sharded or "all-to-all" in sharded
