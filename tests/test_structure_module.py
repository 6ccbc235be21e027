"""The structure module against DeepMind's own outputs on the official parameter layout (shared/reference).

References: `modules/invariant_point_attention`, `modules/fold_iteration`, `modules/structure_module` (23
residues, the last 2 padding; structure module shrunk to 2 layers). Only valid residues are compared.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference_utils import assert_close_on, module_reference
from structure_module_utils import (
    ATOL_SM,
    FOLD_ITERATION_OUTPUTS,
    GC,
    GC_CHUNKED,
    SM,
    assert_fold_iteration_output,
    assert_structure_module_output,
    residue_valid,
    run_fold_iteration,
    run_structure_module,
    structure_module_outputs,
)

from jaxfold.common.all_atom import make_atom14_masks
from jaxfold.common.geometry import Rigid, Rot3, Vec3
from jaxfold.config import model_config
from jaxfold.model.structure_module import InvariantPointAttention, StructureModule, affine_to_rigid
from jaxfold.weights import tree_to_flat


def test_ipa_matches_deepmind(shared_dir):
    io, params = module_reference(shared_dir, "invariant_point_attention")
    rigid = Rigid(
        Rot3.from_array(jnp.asarray(io["input/rotation"])), Vec3.from_array(jnp.asarray(io["input/translation"]))
    )
    # jit: compiling once is much faster than dispatching the many small ops one by one.
    out = jax.jit(InvariantPointAttention(SM, GC).apply)(
        {"params": params["invariant_point_attention"]},
        io["input/inputs_1d"],
        io["input/inputs_2d"],
        io["input/mask"],
        rigid,
    )
    assert_close_on(out, io["output/update"], residue_valid(out.shape, 0), ATOL_SM, what="ipa update")


def test_reference_rotation_is_the_affine_quaternion_rotation(shared_dir):
    """The fold iteration consumes only the affine tensor; DeepMind's `input/rotation` is its rotation."""
    io, _ = module_reference(shared_dir, "fold_iteration")
    rot = affine_to_rigid(jnp.asarray(io["input/affine"])).rot.to_array()
    np.testing.assert_allclose(rot, io["input/rotation"], atol=1e-6)


# Every reference comparison runs unchunked and with `chunk_size` (IPA in query-row chunks, the pair kept in
# its dtype and layer-normed per chunk): both must give DeepMind's outputs.
GLOBAL_CONFIGS = {"unchunked": GC, "chunked": GC_CHUNKED}


@pytest.fixture(scope="module", params=list(GLOBAL_CONFIGS))
def fold_iteration_run(shared_dir, request):
    return run_fold_iteration(shared_dir, GLOBAL_CONFIGS[request.param])


@pytest.mark.parametrize("path", FOLD_ITERATION_OUTPUTS)
def test_fold_iteration_matches_deepmind(fold_iteration_run, path):
    assert_fold_iteration_output(*fold_iteration_run, path)


@pytest.fixture(scope="module", params=list(GLOBAL_CONFIGS))
def structure_module_run(shared_dir, request):
    return (GLOBAL_CONFIGS[request.param], *run_structure_module(shared_dir, GLOBAL_CONFIGS[request.param]))


@pytest.mark.parametrize("path", structure_module_outputs())
def test_structure_module_matches_deepmind(structure_module_run, path):
    _, io, *_, out = structure_module_run
    assert_structure_module_output(io, out, path)


def test_structure_module_params_match_official_layout(structure_module_run):
    """One shared `fold_iteration` without a layer axis, every name and shape as in the official file."""
    global_config, _, params, representations, batch, _ = structure_module_run
    module = StructureModule(SM, global_config)
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), representations, batch))
    ours = {k: tuple(v.shape) for k, v in tree_to_flat(shapes["params"]).items()}
    official = {k: tuple(v.shape) for k, v in tree_to_flat(params["structure_module"]).items()}
    assert ours == official


def test_structure_module_output_shapes(structure_module_run):
    *_, out = structure_module_run
    layers, n = SM.num_layer, 23
    assert out["traj"].shape == (layers, n, 7)
    assert out["final_affines"].shape == (n, 7)
    assert out["act"].shape == (n, SM.num_channel)
    assert out["sidechains"]["atom_pos"].shape == (layers, n, 14)
    assert out["sidechains"]["frames"].shape == (layers, n, 8)
    assert out["final_atom_positions"].shape == (n, 37, 3)
    # Absent atom37 slots are exactly zero.
    absent = np.asarray(out["final_atom_mask"]) == 0
    assert np.all(np.asarray(out["final_atom_positions"])[absent] == 0)


def test_structure_module_training_dropout():
    """Training mode: dropout (needs the `dropout` RNG) is drawn afresh per layer and per key; the result
    stays finite. A tiny config keeps compilation cheap."""
    cfg = model_config("model_1_ptm", structure_module_num_layer=2, deterministic=False)
    sm = cfg.model.heads.structure_module.replace(**{"num_channel": 16, "num_head": 2, "sidechain.num_channel": 8})
    gc = cfg.model.global_config
    n = 5
    rng = np.random.default_rng(0)
    aatype = jnp.asarray([0, 7, 12, 17, 3])
    representations = {
        "single": rng.normal(size=(n, 16)).astype(np.float32),
        "pair": rng.normal(size=(n, n, 8)).astype(np.float32),
    }
    batch = {"seq_mask": jnp.ones(n), "aatype": aatype, **make_atom14_masks(aatype)}
    module = StructureModule(sm, gc, is_training=True)
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), representations, batch))
    params = jax.tree_util.tree_map(lambda s: (0.3 * rng.normal(size=s.shape)).astype(np.float32), shapes)

    def run(key):
        return module.apply(params, representations, batch, rngs={"dropout": key})["final_atom_positions"]

    run = jax.jit(run)
    pos = [np.asarray(run(key)) for key in jax.random.split(jax.random.PRNGKey(1), 2)]
    assert np.isfinite(pos).all()
    assert np.abs(pos[0] - pos[1]).max() > 1e-3
