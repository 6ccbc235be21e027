"""AlphaFold-Multimer under dynamic axial parallelism (8 virtual CPU devices, see conftest.py): the multimer
Evoformer order (outer product mean first), the fused triangle multiplications and the multimer template
stack, split over `dap` devices, reproduce DeepMind's module outputs; the whole model (slow) too.

Module inputs have 18 residues (not a multiple of 4), so the DAP padding is exercised.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from multimer_reference_utils import ATOL_TRUNK, EMB, GC, valid_2d, valid_rows
from reference_utils import assert_close_on

from jaxfold.model import run_alphafold
from jaxfold.model.evoformer import EvoformerIteration
from jaxfold.model.template_multimer import TemplateEmbedding
from jaxfold.parallel.mesh import dap_for_mesh, make_mesh


class _Block(nn.Module):
    dap: object
    is_extra_msa: bool

    @nn.compact
    def __call__(self, msa, pair, msa_mask, pair_mask):
        from jaxfold.model.stacks import apply_stack  # noqa: PLC0415

        block = nn.scan(
            EvoformerIteration, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=nn.broadcast, length=1
        )(EMB.evoformer, GC, self.is_extra_msa, dap=self.dap, name="stack")
        return apply_stack(block, self.dap, msa, pair, msa_mask, pair_mask)


def _sharded(dap_size: int):
    """(the Dap helper, a wrapper that jits a function of one replicated argument tuple under shard_map)."""
    mesh = make_mesh(f"{dap_size}x1", jax.devices()[:dap_size])
    return dap_for_mesh(mesh), lambda f: jax.jit(jax.shard_map(f, mesh=mesh, in_specs=P(), out_specs=P()))


@pytest.mark.parametrize(
    "name,scope,extra,dap_size",
    [
        ("evoformer_iteration", "evoformer_iteration", False, 4),
        ("extra_msa_stack_iteration", "extra_msa_stack", True, 2),
    ],
)
def test_multimer_evoformer_iteration_under_dap(multimer_reference, name, scope, extra, dap_size):
    io, params = multimer_reference(name)
    dap, wrap = _sharded(dap_size)
    stacked = {"stack": jax.tree_util.tree_map(lambda x: np.asarray(x)[None], params[scope])}
    module = _Block(dap, extra)

    def forward(args):
        return module.apply({"params": stacked}, *args)

    msa, pair = wrap(forward)((io["input/msa"], io["input/pair"], io["input/msa_mask"], io["input/pair_mask"]))
    assert_close_on(msa, io["output/msa"], valid_rows(msa.shape, 1), ATOL_TRUNK, what=f"{name} msa dap={dap_size}")
    assert_close_on(pair, io["output/pair"], valid_2d(pair.shape), ATOL_TRUNK, what=f"{name} pair dap={dap_size}")


def test_multimer_template_embedding_under_dap(multimer_reference):
    io, params = multimer_reference("template_embedding")
    dap, wrap = _sharded(4)
    module = TemplateEmbedding(EMB.template, GC, dap=dap)
    batch = {k: io[f"input/{k}"] for k in ("template_aatype", "template_all_atom_positions", "template_all_atom_mask")}

    def forward(args):
        query, batch, padding, multichain = args
        return module.apply({"params": params["template_embedding"]}, query, batch, padding, multichain)

    out = wrap(forward)(
        (io["input/query_embedding"], batch, io["input/padding_mask_2d"], io["input/multichain_mask_2d"])
    )
    assert_close_on(out, io["output/embedding"], valid_2d(out.shape), ATOL_TRUNK, what="template embedding dap=4")


@pytest.mark.slow
def test_whole_multimer_model_with_dap_matches_deepmind(shared_dir):
    """run_alphafold from PRNGKey(0) with the trunk split over 2 devices, against outputs.npz."""
    import json  # noqa: PLC0415

    from test_multimer_reference import compare_outputs  # noqa: PLC0415

    from jaxfold.config import model_config  # noqa: PLC0415
    from jaxfold.weights import load_alphafold_params  # noqa: PLC0415

    base = shared_dir / "reference_multimer"
    manifest = json.loads((base / "manifest.json").read_text())
    cfg = model_config("model_1_multimer_v3", **manifest["overrides"])
    params = load_alphafold_params(base / manifest["params_file"], cfg)
    features = dict(np.load(base / "features.npz"))
    outputs = dict(np.load(base / "outputs.npz"))
    flat = run_alphafold(cfg, params, features, mesh=make_mesh("2x1", jax.devices()[:2]), rng=jax.random.PRNGKey(0))
    compare_outputs(flat, outputs)
