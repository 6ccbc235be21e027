"""A full-size preset (model_1_ptm: 48 Evoformer blocks, 4 extra-MSA blocks, 8 structure layers) end to end on
CPU: initialise, write in the official file layout, load back through the official-format loader, and run one
forward pass on real features (ubiquitin 1-37, shared/reference/features.npz)."""

import jax
import numpy as np
import pytest

from jaxfold.config import model_config
from jaxfold.model import run_alphafold
from jaxfold.model.init import init_params
from jaxfold.weights import load_alphafold_params, read_npz, save_alphafold_params


@pytest.mark.slow
def test_full_size_model_1_ptm_initialises_loads_and_runs(tmp_path, shared_dir):
    cfg = model_config("model_1_ptm", num_recycle=0)
    params = init_params(cfg, jax.random.PRNGKey(1))
    path = tmp_path / "params_model_1_ptm.npz"
    save_alphafold_params(params, path)
    flat = read_npz(path)
    assert len(flat) == 338  # the official key count of params_model_1_ptm.npz
    assert sum(v.size for v in flat.values()) > 90_000_000
    loaded = load_alphafold_params(path, cfg)
    with np.load(shared_dir / "reference" / "features.npz") as f:
        features = {k: f[k][:1] for k in f.files}
    out = run_alphafold(cfg, loaded, features)
    positions = out["structure_module/final_atom_positions"]
    assert positions.shape == (37, 37, 3) and np.isfinite(positions).all()
    assert out["structure_module/traj"].shape == (8, 37, 7)
    plddt = out["confidence/plddt"]
    assert plddt.shape == (37,) and np.all((plddt >= 0) & (plddt <= 100))
    assert 0.0 <= float(out["confidence/ptm"]) <= 1.0
