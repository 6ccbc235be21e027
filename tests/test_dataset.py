"""Tests of jaxfold.data.dataset.TrainingDataset on real shared chains (1psm_A, 2q2k_A, 4zey_A)."""

from __future__ import annotations

import numpy as np
import pytest

from jaxfold.common import residue_constants as rc
from jaxfold.config import model_config
from jaxfold.data.dataset import DatasetError, TrainingDataset

CHAINS = ["1psm_A", "2q2k_A", "4zey_A"]
CROP = 48


def _config(use_templates=False, num_recycle=2):
    return model_config("model_1_ptm", num_recycle=num_recycle, **{"data.common.use_templates": use_templates})


def _make(tmp_path, shared_dir, chains=CHAINS, **kw):
    data = shared_dir / "data"
    lst = tmp_path / "chains.txt"
    lst.write_text("\n".join(chains) + "\n")
    kw.setdefault("crop_size", CROP)
    kw.setdefault("max_msa_clusters", 8)
    kw.setdefault("max_extra_msa", 16)
    kw.setdefault("ground_truth", False)
    cfg = kw.pop("config", None) or _config()
    return TrainingDataset(data / "structures" / "mmcif", data / "msas", cfg, chain_list=lst, **kw)


@pytest.fixture(scope="module")
def ds(tmp_path_factory, shared_dir):
    return _make(tmp_path_factory.mktemp("ds"), shared_dir)


def _index_of(ds, chain, seed=0):
    for i in range(50):
        if ds.chain_for(i, seed) == chain:
            return i
    raise AssertionError(chain)


def test_entries_and_metadata(ds):
    assert sorted(ds.entries) == CHAINS
    assert len(ds) == 3
    assert ds.metadata["2q2k_A"]["resolution"] == pytest.approx(3.0)
    assert len(ds.metadata["4zey_A"]["seq"]) == 84
    # one epoch is a permutation of the entries
    assert sorted(ds.chain_for(i, 7) for i in range(3)) == CHAINS


def test_shapes_fixed_to_crop(ds):
    shapes = None
    for chain in CHAINS:  # 38 (padded), 70 and 84 (cropped) residues
        s = ds.sample(_index_of(ds, chain), 0)
        cur = {k: v.shape for k, v in s.items()}
        if shapes is None:
            shapes = cur
        assert cur == shapes, chain
        n = len(ds.metadata[chain]["seq"])
        assert int(s["num_res"]) == n
        assert int(s["seq_length"][0]) == min(n, CROP)
        assert s["seq_mask"][0].sum() == min(n, CROP)
    nslices = 3  # num_recycle=2
    clusters = 8 - ds.settings.max_templates  # model_1_ptm reduces the clusters by max_templates, as AlphaFold
    assert shapes["msa_feat"] == (nslices, clusters, CROP, 49)
    assert shapes["extra_msa"] == (nslices, 16, CROP)
    assert shapes["all_atom_positions"] == (CROP, 37, 3)
    assert shapes["num_iter_recycling"] == (nslices,)


def test_crop_consistency(ds):
    chain = "4zey_A"  # 84 residues, all observed -> every crop position has atoms
    seq = ds.metadata[chain]["seq"]
    for seed in range(3):
        s = ds.sample(_index_of(ds, chain, seed), seed)
        start = int(s["crop_start"])
        assert 0 <= start <= len(seq) - CROP
        want = np.array([rc.restype_order_with_x.get(c, 20) for c in seq[start : start + CROP]])
        np.testing.assert_array_equal(s["aatype"][0], want)
        np.testing.assert_array_equal(s["residue_index"][0], np.arange(start, start + CROP))
        # MSA first row (before BERT masking) = query crop, in every slice
        for sl in range(s["true_msa"].shape[0]):
            np.testing.assert_array_equal(s["true_msa"][sl, 0], want)
        # target_feat one-hot matches
        np.testing.assert_array_equal(s["target_feat"][0, :, 1:].argmax(-1), want)
        # ground truth: the cropped residues' atoms are the residues' own atoms
        mask = s["all_atom_mask"]
        exists = rc.STANDARD_ATOM_MASK[want]
        assert np.all(mask <= exists)  # no atom a residue type does not have
        assert np.all(mask[:, rc.atom_order["CA"]] == 1)
        full_pos, _ = _full_gt(ds, chain)
        np.testing.assert_array_equal(s["all_atom_positions"], full_pos[start : start + CROP])


def _full_gt(ds, chain):
    from jaxfold.data import mmcif

    obj = mmcif.parse_mmcif_file(ds._cif_paths[chain])  # noqa: SLF001
    return obj.get_atom_positions(chain.split("_")[1])


def test_padding_and_missing_residues(ds):
    s = ds.sample(_index_of(ds, "1psm_A"), 0)  # 38 residues < crop 48
    assert int(s["crop_start"]) == 0
    assert s["seq_mask"][0, 38:].sum() == 0 and s["seq_mask"][0, :38].sum() == 38
    assert s["all_atom_mask"][38:].sum() == 0
    assert s["msa_mask"][:, :, 38:].sum() == 0
    s = ds.sample(_index_of(ds, "2q2k_A"), 0)  # residues 1-22 and 68-70 unobserved
    start = int(s["crop_start"])
    ca = s["all_atom_mask"][:, rc.atom_order["CA"]]
    observed = np.zeros(70)
    observed[22:67] = 1
    np.testing.assert_array_equal(ca, observed[start : start + CROP])


def test_determinism_and_seed_dependence(ds):
    a, b = ds.sample(1, 5), ds.sample(1, 5)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    c = ds.sample(4, 5)  # index 4 = next epoch; differs in choices
    assert any(
        not np.array_equal(a[k], c[k]) for k in ("bert_mask", "msa_feat", "crop_start") if a[k].shape == c[k].shape
    ) or ds.chain_for(1, 5) != ds.chain_for(4, 5)


def test_recycling_sampled_uniformly(ds):
    iters = {int(ds.sample(i, 3)["num_iter_recycling"][0]) for i in range(9)}
    assert iters <= {0, 1, 2} and len(iters) >= 2


def test_filters(tmp_path, shared_dir):
    d = _make(tmp_path, shared_dir, max_resolution=2.0)  # drops 2q2k (3.0 Å); NMR 1psm keeps 0.0
    assert sorted(d.entries) == ["1psm_A", "4zey_A"]
    assert "3.0" in d.skipped["2q2k_A"]
    d = _make(tmp_path, shared_dir, min_length=50, max_length=80)
    assert d.entries == ["2q2k_A"]
    with pytest.raises(DatasetError, match="filtered out"):
        _make(tmp_path, shared_dir, max_length=10)


def test_missing_data_errors(tmp_path, shared_dir):
    with pytest.raises(DatasetError, match=r"9xyz_A: no mmCIF .*9xyz\.cif; no alignment folder"):
        _make(tmp_path, shared_dir, chains=["9xyz_A"])
    d = _make(tmp_path, shared_dir, chains=["1psm_A", "9xyz_A"])
    assert d.entries == ["1psm_A"] and "9xyz_A" in d.skipped
    with pytest.raises(DatasetError, match="not found"):
        TrainingDataset(tmp_path / "nope", shared_dir / "data" / "msas", _config())


def test_cluster_sampling(tmp_path, shared_dir):
    clusters = tmp_path / "clusters.txt"
    clusters.write_text("1psm_A 4zey_A\n2q2k_A\n9xyz_A\n")
    d = _make(tmp_path, shared_dir, cluster_file=clusters)
    assert len(d) == 2  # the cluster without usable chains is dropped
    picks = [d.chain_for(i, 0) for i in range(400)]
    frac = picks.count("2q2k_A") / len(picks)
    assert 0.4 < frac < 0.6  # cluster uniformly, then member
    assert {"1psm_A", "4zey_A"} <= set(picks)
    assert picks == [d.chain_for(i, 0) for i in range(400)]


def test_templates_and_ground_truth(tmp_path, shared_dir):
    pytest.importorskip("jaxfold.data.ground_truth")
    d = _make(
        tmp_path,
        shared_dir,
        chains=["4zey_A"],
        config=_config(use_templates=True),
        max_templates=2,
        ground_truth=True,
        num_recycle=0,
    )
    s = d.sample(0, 0)
    assert s["template_aatype"].shape == (1, 2, CROP)
    assert s["template_all_atom_positions"].shape == (1, 2, CROP, 37, 3)
    assert s["atom14_gt_positions"].shape[0] == CROP
    assert s["pseudo_beta"].shape == (CROP, 3)


def test_clamped_fape_is_sampled_per_example(ds):
    """`use_clamped_fape` is 1 in ~90 % of the examples (AlphaFold, Suppl. 1.11.5), a function of
    (seed, index) only, configurable, and carried by every sample."""
    from jaxfold.data.dataset import use_clamped_fape

    draws = np.array([use_clamped_fape(0, i, 0.9) for i in range(4000)])
    assert set(np.unique(draws)) == {0.0, 1.0}
    assert abs(draws.mean() - 0.9) < 0.015  # 4000 draws: sd 0.0047
    assert np.array_equal(draws, [use_clamped_fape(0, i, 0.9) for i in range(4000)])
    assert not np.array_equal(draws, [use_clamped_fape(1, i, 0.9) for i in range(4000)])
    assert all(use_clamped_fape(3, i, 1.0) == 1.0 and use_clamped_fape(3, i, 0.0) == 0.0 for i in range(50))
    assert ds.settings.use_clamped_fape_probability == 0.9  # the config's default
    index = next(i for i in range(200) if use_clamped_fape(0, i, 0.9) == 0.0)  # an unclamped example
    for i in (0, index):
        s = ds.sample(i, 0)
        assert s["use_clamped_fape"].shape == () and s["use_clamped_fape"].dtype == np.float32
        assert s["use_clamped_fape"] == use_clamped_fape(0, i, 0.9)
