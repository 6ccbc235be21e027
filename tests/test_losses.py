"""AlphaFold2 training losses and ground-truth features (jaxfold.losses, jaxfold.data.ground_truth)
on real structures, against independent numpy computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfold import losses
from jaxfold.common import all_atom, protein
from jaxfold.common import residue_constants as rc
from jaxfold.common.geometry import Rigid, Vec3
from jaxfold.config import model_config
from jaxfold.data.ground_truth import make_ground_truth

HEADS = model_config("model_1_ptm").model.heads
SM = HEADS.structure_module
FAPE_FLOOR = np.sqrt(1e-4) / 10.0  # sqrt(epsilon) / length_scale: FAPE of identical structures


# Eager op-by-op dispatch compiles every small op; jit each loss once instead (configs closed over).
renamed_gt = jax.jit(losses.compute_renamed_ground_truth)
sidechain_fape = jax.jit(lambda batch, sc, renamed: losses.sidechain_loss(batch, sc, renamed, SM)["fape"])
backbone = jax.jit(lambda batch, traj: losses.backbone_loss(batch, traj, SM))
torsions_of = jax.jit(all_atom.atom37_to_torsion_angles, static_argnums=3)
chi_loss = jax.jit(lambda batch, sc: losses.supervised_chi_loss(batch, sc, SM))


@jax.jit
def violations_and_loss(batch, atom14):
    v = losses.find_structural_violations(batch, atom14, SM)
    return v, losses.structural_violation_loss(batch, v)


def _np(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def load(shared_dir, name):
    return protein.from_file(shared_dir / "data" / "structures" / "pdb" / f"{name}.pdb")


def make_batch(prot, resolution=1.8, positions=None, sl=slice(None)):
    pos = prot.atom_positions if positions is None else positions
    gt = make_ground_truth(prot.aatype[sl], pos[sl], prot.atom_mask[sl], resolution)
    n = len(prot.aatype[sl])
    return _np(dict(gt, aatype=prot.aatype[sl], residue_index=prot.residue_index[sl], seq_mask=np.ones(n, np.float32)))


@pytest.fixture(scope="module")
def ubq(shared_dir):
    return load(shared_dir, "1ubq")


@pytest.fixture(scope="module")
def gt(ubq):
    return make_batch(ubq)


@pytest.fixture(scope="module")
def noisy(ubq):
    rng = np.random.default_rng(0)
    pos = ubq.atom_positions + rng.normal(scale=3.0, size=ubq.atom_positions.shape).astype(np.float32)
    return make_batch(ubq, positions=pos * ubq.atom_mask[..., None])


def rot_matrices(flat12):
    """[..., 12] -> R [..., 3, 3], t [..., 3]."""
    return flat12[..., :9].reshape(flat12.shape[:-1] + (3, 3)), flat12[..., 9:]


def quat_to_matrix(q):
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def dihedral(p0, p1, p2, p3):
    b0, b1, b2 = p0 - p1, p2 - p1, p3 - p2
    b1 = b1 / np.linalg.norm(b1)
    v = b0 - np.dot(b0, b1) * b1
    w = b2 - np.dot(b2, b1) * b1
    return np.arctan2(np.dot(np.cross(b1, v), w), np.dot(v, w))


def sidechains_of(frames_flat12, atom14_positions):
    """A one-layer `sidechains` output from flat12 frames [N, 8, 12] and atom14 positions [N, 14, 3]."""
    frames = Rigid.from_tensor_flat12(jnp.asarray(frames_flat12)[None])
    return {"frames": frames, "atom_pos": Vec3.from_array(jnp.asarray(atom14_positions)[None])}


# ---------------------------------------------------------------------------------------------------------
# (a) Ground truth.
# ---------------------------------------------------------------------------------------------------------


def test_frames_are_proper_rotations(gt):
    R, _ = rot_matrices(gt["rigidgroups_gt_frames"])
    exists = gt["rigidgroups_gt_exists"] > 0
    assert exists[:, 0].all() and exists.sum() > 200
    R = R[exists]
    np.testing.assert_allclose(R @ np.swapaxes(R, -1, -2), np.broadcast_to(np.eye(3), R.shape), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-5)
    Ralt, _ = rot_matrices(gt["rigidgroups_alt_gt_frames"])
    np.testing.assert_allclose(np.linalg.det(Ralt[exists]), 1.0, atol=1e-5)
    # Backbone frame: CA at the origin, C on +x, N in the xy plane with y > 0; the affine tensor is it.
    R0, t0 = rot_matrices(gt["rigidgroups_gt_frames"][:, 0])
    pos = gt["all_atom_positions"]
    np.testing.assert_allclose(t0, pos[:, 1], atol=1e-5)
    c_local = np.einsum("nji,nj->ni", R0, pos[:, 2] - pos[:, 1])
    n_local = np.einsum("nji,nj->ni", R0, pos[:, 0] - pos[:, 1])
    np.testing.assert_allclose(c_local[:, 1:], 0, atol=1e-4)
    assert (c_local[:, 0] > 1.3).all() and (n_local[:, 1] > 0).all()
    np.testing.assert_allclose(n_local[:, 2], 0, atol=1e-4)
    np.testing.assert_allclose(quat_to_matrix(gt["backbone_affine_tensor"][:, :4]), R0, atol=1e-5)
    np.testing.assert_allclose(gt["backbone_affine_tensor"][:, 4:], t0, atol=1e-6)
    assert gt["backbone_affine_mask"].all()


def test_atom14_atom37_consistent(ubq, gt):
    back = all_atom.atom14_to_atom37(gt["atom14_gt_positions"], gt["residx_atom37_to_atom14"], gt["atom37_atom_exists"])
    back_mask = all_atom.atom14_to_atom37(
        gt["atom14_gt_exists"], gt["residx_atom37_to_atom14"], gt["atom37_atom_exists"]
    )
    mask37 = ubq.atom_mask * gt["atom37_atom_exists"]  # atom14 has no OXT
    assert ubq.atom_mask.sum() - mask37.sum() == 1 and ubq.atom_mask[-1, rc.atom_order["OXT"]]
    np.testing.assert_array_equal(np.asarray(back_mask), mask37)
    np.testing.assert_array_equal(np.asarray(back), ubq.atom_positions * mask37[..., None])
    assert gt["atom14_gt_exists"].sum() == mask37.sum()
    # Alternative naming is a permutation within each residue, only of the ambiguous atoms.
    diff = np.abs(gt["atom14_alt_gt_positions"] - gt["atom14_gt_positions"]).sum(-1) > 0
    assert not (diff & (gt["atom14_atom_is_ambiguous"] == 0)).any()
    assert diff.sum() > 0
    np.testing.assert_allclose(
        np.sort(gt["atom14_alt_gt_positions"], axis=1), np.sort(gt["atom14_gt_positions"], axis=1)
    )


def test_chi_angles_match_independent_dihedrals(ubq, gt):
    checked = 0
    for i, a in enumerate(ubq.aatype):
        resname = rc.restype_1to3[rc.restypes[a]]
        for k, names in enumerate(rc.chi_angles_atoms[resname]):
            idx = [rc.atom_order[n] for n in names]
            assert gt["chi_mask"][i, k] == ubq.atom_mask[i, idx].all()
            if not gt["chi_mask"][i, k]:
                continue
            ang = dihedral(*[ubq.atom_positions[i, j].astype(np.float64) for j in idx])
            np.testing.assert_allclose(gt["chi_angles_sin_cos"][i, k], [np.sin(ang), np.cos(ang)], atol=1e-4)
            assert abs(np.angle(np.exp(1j * (gt["chi_angles"][i, k] - ang)))) < 1e-3
            checked += 1
        assert not gt["chi_mask"][i, len(rc.chi_angles_atoms[resname]) :].any()
    assert checked > 100
    sb, sm = all_atom.pseudo_beta_fn(ubq.aatype, ubq.atom_positions, ubq.atom_mask)
    np.testing.assert_array_equal(gt["pseudo_beta"], sb)
    np.testing.assert_array_equal(gt["pseudo_beta_mask"], sm)


def test_swapped_ambiguous_atoms_give_zero_renamed_sidechain_fape(gt):
    ambiguous_res = gt["atom14_atom_is_ambiguous"].any(-1) & gt["atom14_gt_exists"].any(-1)
    assert ambiguous_res.sum() >= 10  # ASP/GLU/PHE/TYR of ubiquitin
    # A "prediction" with every symmetric pair swapped: the alt-named positions and frames.
    pred = gt["atom14_alt_gt_positions"]
    sidechains = sidechains_of(gt["rigidgroups_alt_gt_frames"], pred)
    renamed = _np(renamed_gt(gt, jnp.asarray(pred)))
    np.testing.assert_array_equal(renamed["alt_naming_is_better"], ambiguous_res.astype(np.float32))
    fape = sidechain_fape(gt, sidechains, renamed)
    np.testing.assert_allclose(fape, FAPE_FLOOR, rtol=1e-3)
    # Without renaming the same prediction is penalised.
    plain = {
        "alt_naming_is_better": np.zeros(len(pred), np.float32),
        "renamed_atom14_gt_positions": gt["atom14_gt_positions"],
        "renamed_atom14_gt_exists": gt["atom14_gt_exists"],
    }
    assert sidechain_fape(gt, sidechains, plain) > 3 * FAPE_FLOOR
    # The true naming as prediction: no renaming, FAPE at the floor.
    sc_true = sidechains_of(gt["rigidgroups_gt_frames"], gt["atom14_gt_positions"])
    r_true = renamed_gt(gt, jnp.asarray(gt["atom14_gt_positions"]))
    assert float(jnp.sum(r_true["alt_naming_is_better"])) == 0
    np.testing.assert_allclose(sidechain_fape(gt, sc_true, r_true), FAPE_FLOOR, rtol=1e-3)


# ---------------------------------------------------------------------------------------------------------
# (b) FAPE.
# ---------------------------------------------------------------------------------------------------------


def traj_of(batch):
    return jnp.asarray(batch["backbone_affine_tensor"])[None]


def test_backbone_fape_identity_and_rigid_invariance(ubq, gt):
    out = backbone(gt, traj_of(gt))
    np.testing.assert_allclose(out["fape"], FAPE_FLOOR, rtol=1e-4)
    rng = np.random.default_rng(1)
    q = rng.normal(size=4)
    R = quat_to_matrix(q)
    moved_pos = (ubq.atom_positions @ R.T + np.array([30.0, -12.0, 7.0])) * ubq.atom_mask[..., None]
    moved = make_batch(ubq, positions=moved_pos.astype(np.float32))
    for clamped in (0.0, 1.0):
        batch = dict(gt, use_clamped_fape=clamped)
        np.testing.assert_allclose(backbone(batch, traj_of(moved))["fape"], FAPE_FLOOR, rtol=2e-2)
    # All-atom FAPE with the moved structure's frames and atoms.
    r = renamed_gt(gt, jnp.asarray(moved["atom14_gt_positions"]))
    sc = sidechains_of(moved["rigidgroups_gt_frames"], moved["atom14_gt_positions"])
    np.testing.assert_allclose(sidechain_fape(gt, sc, r), FAPE_FLOOR, rtol=5e-2)


def test_backbone_fape_finite_and_unchanged_with_padding(gt, noisy):
    """A crop longer than the chain pads the ground truth with zeros (zero quaternions, mask 0): FAPE
    must ignore the padding, not turn NaN (it did: the zero quaternion was normalised to NaN)."""
    pad = 6
    padded = {
        k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
        for k, v in gt.items()
        if np.ndim(v) >= 1 and len(v) == len(gt["aatype"])
    }
    traj = jnp.asarray(noisy["backbone_affine_tensor"])[None]
    traj_padded = jnp.concatenate([traj, jnp.tile(jnp.asarray([1.0, 0, 0, 0, 0, 0, 0]), (1, pad, 1))], 1)
    for clamped in (0.0, 1.0):
        want = backbone(dict(gt, use_clamped_fape=clamped), traj)
        got = backbone(dict(padded, use_clamped_fape=clamped), traj_padded)
        assert np.isfinite(float(got["fape"]))
        np.testing.assert_allclose(got["fape"], want["fape"], rtol=1e-5)
        grad = jax.grad(lambda t: backbone(dict(padded, use_clamped_fape=clamped), t)["loss"])(traj_padded)
        assert np.all(np.isfinite(np.asarray(grad)))


def test_fape_matches_explicit_loop(gt, noisy):
    sub = np.arange(5, 17)
    pf, pt = rot_matrices(noisy["rigidgroups_gt_frames"][sub, 0])
    tf, tt = rot_matrices(gt["rigidgroups_gt_frames"][sub, 0])
    px, tx = noisy["atom14_gt_positions"][sub].reshape(-1, 3), gt["atom14_gt_positions"][sub].reshape(-1, 3)
    fmask = np.ones(len(sub), np.float32)
    fmask[3] = 0
    xmask = gt["atom14_gt_exists"][sub].reshape(-1)
    for clamp in (None, 10.0, 3.0):
        total, count = 0.0, 0.0
        for i in range(len(sub)):
            for j in range(len(px)):
                if not (fmask[i] and xmask[j]):
                    continue
                lp = pf[i].T @ (px[j] - pt[i])
                lt = tf[i].T @ (tx[j] - tt[i])
                e = np.sqrt(np.sum((lp - lt) ** 2) + 1e-4)
                total += min(e, clamp) if clamp else e
                count += 1
        expected = total / 10.0 / (1e-4 + count)
        got = losses.frame_aligned_point_error(
            Rigid.from_tensor_flat12(jnp.asarray(noisy["rigidgroups_gt_frames"][sub, 0])),
            Rigid.from_tensor_flat12(jnp.asarray(gt["rigidgroups_gt_frames"][sub, 0])),
            jnp.asarray(fmask),
            Vec3.from_array(jnp.asarray(px)),
            Vec3.from_array(jnp.asarray(tx)),
            jnp.asarray(xmask),
            length_scale=10.0,
            l1_clamp_distance=clamp,
        )
        np.testing.assert_allclose(got, expected, rtol=2e-5)


def test_clamped_fape_not_above_unclamped(gt, noisy):
    clamped = backbone(dict(gt, use_clamped_fape=1.0), traj_of(noisy))["fape"]
    unclamped = backbone(dict(gt, use_clamped_fape=0.0), traj_of(noisy))["fape"]
    mixed = backbone(dict(gt, use_clamped_fape=0.9), traj_of(noisy))["fape"]
    assert FAPE_FLOOR * 10 < clamped < unclamped
    np.testing.assert_allclose(mixed, 0.9 * clamped + 0.1 * unclamped, rtol=1e-5)
    # Mean over the trajectory, last layer reported.
    traj = jnp.concatenate([traj_of(noisy), traj_of(gt)])
    out = backbone(dict(gt, use_clamped_fape=1.0), traj)
    np.testing.assert_allclose(out["fape"], FAPE_FLOOR, rtol=1e-3)
    np.testing.assert_allclose(out["loss"], (clamped + FAPE_FLOOR) / 2, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# (c) Structural violations.
# ---------------------------------------------------------------------------------------------------------


def violations_of(batch, atom14):
    v, loss = violations_and_loss(batch, jnp.asarray(atom14))
    return _np(v), float(loss)


@pytest.mark.parametrize("name", ["1ubq", "1ejg"])
def test_violations_near_zero_on_crystal_structures(shared_dir, name):
    prot = load(shared_dir, name)
    batch = make_batch(prot)
    v, loss = violations_of(batch, batch["atom14_gt_positions"])
    assert loss < 1e-3, loss
    assert v["total_per_residue_violations_mask"].mean() < 0.05


def test_violations_after_moving_a_residue_into_another(ubq, gt):
    pos = gt["atom14_gt_positions"].copy()
    # Put residue 10 on top of residue 40 (1 A off): clashes with 40 and broken bonds to 9 and 11.
    pos[10] = (pos[10] - pos[10, 1] + pos[40, 1] + 1.0) * gt["atom14_atom_exists"][10, :, None]
    v, loss = violations_of(gt, pos)
    assert loss > 0.1
    br = v["between_residues"]
    assert br["clashes_per_atom_clash_mask"][10].any() and br["clashes_per_atom_clash_mask"][40].any()
    assert br["bonds_c_n_loss_mean"] > 0
    mask = v["total_per_residue_violations_mask"]
    assert mask[[9, 10, 11, 40]].all()


def test_bond_length_violation_counts_match_numpy(ubq, gt):
    rng = np.random.default_rng(2)
    pos = gt["atom14_gt_positions"] + rng.normal(scale=0.2, size=gt["atom14_gt_positions"].shape)
    pos = (pos * gt["atom14_atom_exists"][..., None]).astype(np.float32)
    v, _ = violations_of(gt, pos)
    ri = gt["residue_index"]
    expected, expected_loss, n_bonds = [], 0.0, 0
    for i in range(len(ri) - 1):
        if ri[i + 1] - ri[i] != 1:
            expected.append(0)
            continue
        pro = gt["aatype"][i + 1] == rc.resname_to_idx["PRO"]
        length = rc.between_res_bond_length_c_n[int(pro)]
        std = rc.between_res_bond_length_stddev_c_n[int(pro)]
        d = np.linalg.norm(pos[i, 2].astype(np.float64) - pos[i + 1, 0])
        err = np.sqrt(1e-6 + (d - length) ** 2)
        expected.append(int(err > 12 * std))
        expected_loss += max(err - 12 * std, 0)
        n_bonds += 1
    got = v["between_residues"]["c_n_violation_mask"]
    assert 5 < sum(expected) < len(expected)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(
        v["between_residues"]["bonds_c_n_loss_mean"], expected_loss / (n_bonds + 1e-6), rtol=1e-4
    )


# ---------------------------------------------------------------------------------------------------------
# (d) Heads' losses against numpy.
# ---------------------------------------------------------------------------------------------------------


def np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_ce(logits, bins):
    return -np.take_along_axis(np_log_softmax(logits.astype(np.float64)), bins[..., None], -1)[..., 0]


def test_distogram_loss(gt):
    rng = np.random.default_rng(3)
    n = len(gt["aatype"])
    c = HEADS.distogram
    edges = np.linspace(c.first_break, c.last_break, c.num_bins - 1)
    logits = rng.normal(size=(n, n, c.num_bins)).astype(np.float32)
    x, m = gt["pseudo_beta"].astype(np.float64), gt["pseudo_beta_mask"].copy()
    m[7] = 0
    batch = dict(gt, pseudo_beta_mask=m)
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    bins = np.searchsorted(edges, d, side="left")  # number of edges strictly below d
    w = m[:, None] * m[None]
    expected = (np_ce(logits, bins) * w).sum() / (1e-6 + w.sum())
    got = losses.distogram_loss(jnp.asarray(logits), jnp.asarray(edges, jnp.float32), batch)["loss"]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    perfect = 50.0 * np.eye(c.num_bins, dtype=np.float32)[bins]
    assert losses.distogram_loss(jnp.asarray(perfect), jnp.asarray(edges, jnp.float32), batch)["loss"] < 1e-6


def test_masked_msa_loss(shared_dir):
    with np.load(shared_dir / "reference" / "features.npz") as f:
        batch = {"true_msa": f["true_msa"][0], "bert_mask": f["bert_mask"][0]}
    assert batch["bert_mask"].sum() > 0
    rng = np.random.default_rng(4)
    logits = rng.normal(size=batch["true_msa"].shape + (23,)).astype(np.float32)
    ce = np_ce(logits, batch["true_msa"])
    expected = (ce * batch["bert_mask"]).sum() / (1e-8 + batch["bert_mask"].sum())
    np.testing.assert_allclose(losses.masked_msa_loss(jnp.asarray(logits), batch)["loss"], expected, rtol=1e-5)
    perfect = 50.0 * np.eye(23, dtype=np.float32)[batch["true_msa"]]
    assert losses.masked_msa_loss(jnp.asarray(perfect), batch)["loss"] < 1e-6


def np_lddt_ca(pred, true, mask):
    dt = np.linalg.norm(true[:, None] - true[None], axis=-1)
    dp = np.linalg.norm(pred[:, None] - pred[None], axis=-1)
    score = sum((np.abs(dt - dp) < t).astype(float) for t in (0.5, 1, 2, 4)) / 4
    sel = (dt < 15) * mask[:, None] * mask[None] * (1 - np.eye(len(true)))
    return (1e-10 + (sel * score).sum(-1)) / (1e-10 + sel.sum(-1))


RES_CASES = [(1.8, 1.0), (0.1, 1.0), (3.0, 1.0), (0.05, 0.0), (3.5, 0.0), (0.0, 0.0)]


def test_predicted_lddt_loss(gt, noisy):
    rng = np.random.default_rng(5)
    n, c = len(gt["aatype"]), HEADS.predicted_lddt
    pred = gt["all_atom_positions"] + rng.normal(scale=1.0, size=gt["all_atom_positions"].shape)
    pred = pred.astype(np.float32)
    mask = gt["all_atom_mask"].copy()
    mask[3, 1] = 0
    batch = dict(gt, all_atom_mask=mask)
    lddt = np_lddt_ca(pred[:, 1].astype(np.float64), gt["all_atom_positions"][:, 1].astype(np.float64), mask[:, 1])
    bins = np.minimum(np.floor(lddt * c.num_bins).astype(int), c.num_bins - 1)
    assert len(np.unique(bins)) > 5
    logits = rng.normal(size=(n, c.num_bins)).astype(np.float32)
    expected = (np_ce(logits, bins) * mask[:, 1]).sum() / (mask[:, 1].sum() + 1e-8)
    out = losses.predicted_lddt_loss(jnp.asarray(logits), jnp.asarray(pred), batch, c)
    np.testing.assert_allclose(out["lddt_ca"], lddt, atol=1e-5)
    np.testing.assert_allclose(out["loss"], expected, rtol=1e-5)
    perfect = 50.0 * np.eye(c.num_bins, dtype=np.float32)[bins]
    assert losses.predicted_lddt_loss(jnp.asarray(perfect), jnp.asarray(pred), batch, c)["loss"] < 1e-6
    for res, factor in RES_CASES:
        got = losses.predicted_lddt_loss(jnp.asarray(logits), jnp.asarray(pred), dict(batch, resolution=res), c)
        np.testing.assert_allclose(got["loss"], factor * expected, rtol=1e-5)


def test_experimentally_resolved_loss(gt):
    rng = np.random.default_rng(6)
    c = HEADS.experimentally_resolved
    logits = rng.normal(size=gt["all_atom_mask"].shape).astype(np.float64)
    mask = gt["all_atom_mask"].copy()
    mask[rng.random(mask.shape) < 0.1] = 0  # some unresolved atoms
    batch = dict(gt, all_atom_mask=mask)
    p = 1 / (1 + np.exp(-logits))
    xent = -(mask * np.log(p) + (1 - mask) * np.log(1 - p))
    ex = gt["atom37_atom_exists"]
    expected = (xent * ex).sum() / (1e-8 + ex.sum())
    got = losses.experimentally_resolved_loss(jnp.asarray(logits, jnp.float32), batch, c)["loss"]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    perfect = 40.0 * (2 * mask - 1)
    assert losses.experimentally_resolved_loss(jnp.asarray(perfect, jnp.float32), batch, c)["loss"] < 1e-6
    for res, factor in RES_CASES:
        got = losses.experimentally_resolved_loss(jnp.asarray(logits, jnp.float32), dict(batch, resolution=res), c)
        np.testing.assert_allclose(got["loss"], factor * expected, rtol=1e-5)


def test_predicted_aligned_error_loss(gt, noisy):
    rng = np.random.default_rng(7)
    n, c = len(gt["aatype"]), HEADS.predicted_aligned_error
    breaks = np.linspace(0.0, c.max_error_bin, c.num_bins - 1)
    pred_aff = noisy["backbone_affine_tensor"]
    mask = gt["backbone_affine_mask"].copy()
    mask[[2, 50]] = 0
    batch = dict(gt, backbone_affine_mask=mask)
    Rp, tp = quat_to_matrix(pred_aff[:, :4].astype(np.float64)), pred_aff[:, 4:].astype(np.float64)
    Rt, tt = (
        quat_to_matrix(gt["backbone_affine_tensor"][:, :4].astype(np.float64)),
        gt["backbone_affine_tensor"][:, 4:].astype(np.float64),
    )
    lp = np.einsum("iba,ijb->ija", Rp, tp[None] - tp[:, None])
    lt = np.einsum("iba,ijb->ija", Rt, tt[None] - tt[:, None])
    err = np.linalg.norm(lp - lt, axis=-1)
    bins = np.searchsorted(breaks, err, side="left")
    assert len(np.unique(bins)) > 10
    logits = rng.normal(size=(n, n, c.num_bins)).astype(np.float32)
    w = mask[:, None] * mask[None]
    expected = (np_ce(logits, bins) * w).sum() / (1e-8 + w.sum())
    args = (jnp.asarray(breaks, jnp.float32), jnp.asarray(pred_aff))
    np.testing.assert_allclose(
        losses.predicted_aligned_error_loss(jnp.asarray(logits), *args, batch, c)["loss"], expected, rtol=1e-5
    )
    perfect = 50.0 * np.eye(c.num_bins, dtype=np.float32)[bins]
    assert losses.predicted_aligned_error_loss(jnp.asarray(perfect), *args, batch, c)["loss"] < 1e-3
    for res, factor in RES_CASES:
        got = losses.predicted_aligned_error_loss(jnp.asarray(logits), *args, dict(batch, resolution=res), c)
        np.testing.assert_allclose(got["loss"], factor * expected, rtol=1e-5)


def test_supervised_chi_loss(gt):
    n = len(gt["aatype"])
    torsions = torsions_of(gt["aatype"], gt["all_atom_positions"], gt["all_atom_mask"], True)
    # Perfect (alt-named, pi-shifted) angles of unit norm: zero chi and angle-norm loss.
    sc = {
        "angles_sin_cos": torsions["alt_torsion_angles_sin_cos"][None],
        "unnormalized_angles_sin_cos": torsions["alt_torsion_angles_sin_cos"][None],
    }
    out = chi_loss(gt, sc)
    assert out["chi_loss"] < 1e-6 and out["angle_norm_loss"] < 1e-5
    rng = np.random.default_rng(8)
    ang = rng.normal(size=(2, n, 7, 2)).astype(np.float32)
    unit = ang / np.linalg.norm(ang, axis=-1, keepdims=True)
    out = chi_loss(gt, {"angles_sin_cos": unit, "unnormalized_angles_sin_cos": ang})
    true = gt["chi_angles_sin_cos"][None]
    periodic = np.asarray(rc.chi_pi_periodic)[gt["aatype"]][None, ..., None]
    e1 = ((unit[:, :, 3:] - true) ** 2).sum(-1)
    e2 = ((unit[:, :, 3:] - (1 - 2 * periodic) * true) ** 2).sum(-1)
    m = np.broadcast_to(gt["chi_mask"][None], e1.shape)
    np.testing.assert_allclose(out["chi_loss"], (np.minimum(e1, e2) * m).sum() / m.sum(), rtol=1e-5)
    norm = np.abs(np.sqrt((ang**2).sum(-1) + 1e-6) - 1)
    np.testing.assert_allclose(out["angle_norm_loss"], norm.mean(), rtol=1e-5)
    np.testing.assert_allclose(
        out["loss"], SM.chi_weight * out["chi_loss"] + SM.angle_norm_weight * out["angle_norm_loss"], rtol=1e-6
    )


# ---------------------------------------------------------------------------------------------------------
# (e) total_loss on the shrunk reference model.
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow  # ~1-2 min on 2 CPU cores: compiling the gradient of the whole (shrunk) model
def test_total_loss_on_reference_model_and_gradients(shared_dir, ubq):
    from jaxfold.model import AlphaFold
    from jaxfold.weights import load_alphafold_params

    cfg = model_config(
        "model_1_ptm", evoformer_num_block=2, extra_msa_stack_num_block=1, structure_module_num_layer=2, num_recycle=0
    )
    params = load_alphafold_params(shared_dir / "reference" / "params" / "params_model_1_ptm_shrunk.npz", cfg)
    with np.load(shared_dir / "reference" / "features.npz") as f:
        feats = {k: f[k][:1] for k in f.files}
    sl = slice(0, 37)
    np.testing.assert_array_equal(feats["aatype"][0], ubq.aatype[sl])  # features.npz is ubiquitin 1-37
    gt = make_ground_truth(ubq.aatype[sl], ubq.atom_positions[sl], ubq.atom_mask[sl], resolution=1.8)
    batch = dict({k: v[0] for k, v in feats.items()}, **gt, use_clamped_fape=np.float32(0.9))
    model = AlphaFold(cfg.model)

    def loss_fn(p, batch):  # batch traced too: no Python control flow on its values
        outputs = model.apply({"params": p}, {k: batch[k][None] for k in feats})
        return losses.total_loss(outputs, batch, cfg)

    batch = jax.tree_util.tree_map(jnp.asarray, batch)
    (loss, terms), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, batch)
    terms = _np(terms)
    expected_keys = {
        "fape",
        "sidechain_fape",
        "chi_loss",
        "angle_norm_loss",
        "violation_loss",
        "structure_module",
        "distogram",
        "masked_msa",
        "predicted_lddt",
        "experimentally_resolved",
        "predicted_aligned_error",
    }
    assert expected_keys <= set(terms)
    for k, v in terms.items():
        assert np.isfinite(v), k
    h = cfg.model.heads
    recomputed = sum(
        h[k].weight * terms[k]
        for k in (
            "structure_module",
            "distogram",
            "masked_msa",
            "predicted_lddt",
            "experimentally_resolved",
            "predicted_aligned_error",
        )
    )
    np.testing.assert_allclose(loss, recomputed, rtol=1e-5)
    assert 0 < terms["fape"] < 10 and terms["predicted_aligned_error"] > 0 and terms["predicted_lddt"] > 0
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
    total_norm = sum(float(jnp.sum(jnp.square(g))) for g in leaves)
    assert total_norm > 0
    # Every head and the structure module receive gradient.
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    for scope in (
        "structure_module",
        "distogram_head",
        "masked_msa_head",
        "predicted_lddt_head",
        "experimentally_resolved_head",
        "predicted_aligned_error_head",
        "evoformer",
    ):
        norm = sum(float(jnp.sum(jnp.square(g))) for path, g in flat if scope in jax.tree_util.keystr(path))
        assert norm > 0, scope
