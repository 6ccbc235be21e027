"""Official AlphaFold `.npz` parameters <-> jaxfold's Flax tree: structural mapping, validation, errors."""

import numpy as np
import pytest

from jaxfold.config import model_config
from jaxfold.weights import (
    ParamsError,
    flat_to_tree,
    load_alphafold_params,
    model_param_shapes,
    read_npz,
    save_alphafold_params,
    tree_to_flat,
)

SHRINK = dict(evoformer_num_block=2, extra_msa_stack_num_block=1, structure_module_num_layer=2, num_recycle=1)


@pytest.fixture(scope="module")
def reference_params_path(shared_dir):
    return shared_dir / "reference" / "params" / "params_model_1_ptm_shrunk.npz"


@pytest.fixture(scope="module")
def official_flat(reference_params_path):
    return read_npz(reference_params_path)


def test_every_official_key_is_covered_by_the_model(official_flat):
    """Forward direction: the model built for model_1_ptm has exactly the official keys and shapes."""
    expected = model_param_shapes(model_config("model_1_ptm", **SHRINK))
    assert set(expected) == set(official_flat)
    for key, shape in expected.items():
        assert tuple(official_flat[key].shape) == shape, key
    assert len(expected) == 338


def test_load_then_save_round_trips_every_array(tmp_path, reference_params_path, official_flat):
    """Both directions: file -> tree -> file is the identity on keys, shapes and values."""
    params = load_alphafold_params(reference_params_path, model_config("model_1_ptm", **SHRINK))
    assert params["alphafold_iteration"]["evoformer"]["evoformer_iteration"]["msa_row_attention_with_pair_bias"][
        "attention"
    ]["query_w"].shape == (2, 256, 8, 32)
    out = tmp_path / "again.npz"
    save_alphafold_params(params, out)
    again = read_npz(out)
    assert set(again) == set(official_flat)
    for key in official_flat:
        np.testing.assert_array_equal(again[key], official_flat[key], err_msg=key)


def test_flat_tree_mapping_is_bijective(official_flat):
    assert set(tree_to_flat(flat_to_tree(official_flat))) == set(official_flat)


@pytest.mark.parametrize(
    "preset",
    [
        "model_1",
        "model_2",
        "model_3",
        "model_4",
        "model_5",
        "model_1_ptm",
        "model_2_ptm",
        "model_3_ptm",
        "model_4_ptm",
        "model_5_ptm",
    ],
)
def test_presets_have_the_official_key_layout(preset, official_flat):
    """All ten monomer presets: template keys only with templates, PAE head only for _ptm; full depth."""
    cfg = model_config(preset)
    expected = model_param_shapes(cfg)
    templates = cfg.model.embeddings_and_evoformer.template.enabled
    assert any("template_embedding" in k for k in expected) == templates
    assert any("predicted_aligned_error_head" in k for k in expected) == preset.endswith("_ptm")
    key = "alphafold/alphafold_iteration/evoformer/evoformer_iteration/pair_transition/transition1//weights"
    assert expected[key] == (48, 128, 512)
    # Every key the model has exists in the official model_1_ptm layout with the same per-layer shape.
    stacked = ("/evoformer_iteration/", "/extra_msa_stack/", "/__layer_stack_no_state/")
    for k, shape in expected.items():
        ref = official_flat[k].shape
        if any(s in k for s in stacked):
            assert shape[1:] == ref[1:], k  # only the number of layers differs from the shrunk file
        else:
            assert shape == ref, k


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path, official_flat):
    cfg = model_config("model_1_ptm", **SHRINK)
    broken = dict(official_flat)
    gone = "alphafold/alphafold_iteration/evoformer/preprocess_1d//weights"
    del broken[gone]
    broken["alphafold/alphafold_iteration/evoformer/not_a_module//weights"] = np.zeros(3, np.float32)
    bad_shape = "alphafold/alphafold_iteration/evoformer/left_single//bias"
    broken[bad_shape] = np.zeros(5, np.float32)
    path = tmp_path / "broken.npz"
    np.savez(path, **broken)
    with pytest.raises(ParamsError) as err:
        load_alphafold_params(path, cfg)
    message = str(err.value)
    assert gone in message and "not_a_module" in message and bad_shape in message
    assert "missing" in message and "unexpected" in message and "wrong shape" in message


def test_ptm_params_into_non_ptm_preset_is_a_clear_error(reference_params_path):
    with pytest.raises(ParamsError, match="pTM model"):
        load_alphafold_params(reference_params_path, model_config("model_1", **SHRINK))


def test_non_ptm_params_into_ptm_preset_is_a_clear_error(tmp_path, official_flat):
    flat = {k: v for k, v in official_flat.items() if "predicted_aligned_error_head" not in k}
    path = tmp_path / "no_ptm.npz"
    np.savez(path, **flat)
    with pytest.raises(ParamsError, match="without `_ptm`"):
        load_alphafold_params(path, model_config("model_1_ptm", **SHRINK))
    # ...and the same file loads into the non-ptm preset.
    params = load_alphafold_params(path, model_config("model_1", **SHRINK))
    assert "predicted_aligned_error_head" not in params["alphafold_iteration"]


@pytest.mark.parametrize("content", [b"", b"this is not a zip archive", b"PK\x03\x04truncated"])
def test_corrupt_or_missing_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / "params_model_1.npz"
    path.write_bytes(content)
    with pytest.raises(ParamsError, match="not a readable .npz"):
        read_npz(path)
    with pytest.raises(ParamsError, match="does not exist"):
        read_npz(tmp_path / "absent.npz")


@pytest.mark.parametrize("preset", ["model_1_ptm", "model_1_multimer_v3"])
def test_trunk_stacks_of_no_blocks_hold_no_parameters(preset):
    """Both trunks build their stacks through `evoformer.trunk_stack`: with zero blocks a stack is left out
    (no `extra_msa_stack/...` or `evoformer_iteration/...` keys) and every other parameter stays."""
    one = model_param_shapes(model_config(preset, evoformer_num_block=1, extra_msa_stack_num_block=1))
    none = model_param_shapes(model_config(preset, evoformer_num_block=0, extra_msa_stack_num_block=0))
    stacks = {k for k in one if "/evoformer/extra_msa_stack/" in k or "/evoformer/evoformer_iteration/" in k}
    assert any("/extra_msa_stack/" in k for k in stacks) and any("/evoformer_iteration/" in k for k in stacks)
    assert none == {k: v for k, v in one.items() if k not in stacks}
