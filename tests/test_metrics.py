"""Tests for jaxfold.metrics on real structures, checked against brute-force numpy."""

import jax
import numpy as np
import pytest

from jaxfold import metrics
from jaxfold.common import protein, residue_constants

CA = residue_constants.atom_order["CA"]


@pytest.fixture(scope="module")
def structures(shared_dir):
    path = shared_dir / "data" / "structures"
    if not path.is_dir():
        pytest.skip(f"no structures folder at {path}")
    return path


@pytest.fixture(scope="module")
def ubq(structures):
    return protein.from_file(structures / "pdb/1ubq.pdb")


@pytest.fixture(scope="module")
def ubq_ca(ubq):
    return ubq.atom_positions[:, CA].astype(np.float64)


def first_two_models(path):
    """mmCIF text of an NMR entry cut down to its first two models.

    Only ``_atom_site`` rows of later models are dropped (the model number is
    the last column of each row), so parsing is fast and coordinates are the
    file's own.
    """
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith(("ATOM ", "HETATM")) and line.split()[-1] not in ("1", "2"):
            continue
        lines.append(line)
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def psm_models(structures):
    text = first_two_models(structures / "mmcif/1psm.cif")
    return [protein.from_mmcif_string(text, model=m).atom_positions[:, CA].astype(np.float64) for m in (0, 1)]


# --------------------------------------------------------------------------
# Independent reference computations (deliberately naive)
# --------------------------------------------------------------------------


def random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def rotation_about(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def quaternion_superposition(x, y):
    """Horn's quaternion method: best rotation/translation moving x onto y."""
    a = x - x.mean(0)
    b = y - y.mean(0)
    s = a.T @ b
    sxx, sxy, sxz, syx, syy, syz, szx, szy, szz = s.ravel()
    n = np.array(
        [
            [sxx + syy + szz, syz - szy, szx - sxz, sxy - syx],
            [syz - szy, sxx - syy - szz, sxy + syx, szx + sxz],
            [szx - sxz, sxy + syx, -sxx + syy - szz, syz + szy],
            [sxy - syx, szx + sxz, syz + szy, -sxx - syy + szz],
        ]
    )
    _, vecs = np.linalg.eigh(n)
    q0, q1, q2, q3 = vecs[:, -1]
    rot = np.array(
        [
            [q0 * q0 + q1 * q1 - q2 * q2 - q3 * q3, 2 * (q1 * q2 - q0 * q3), 2 * (q1 * q3 + q0 * q2)],
            [2 * (q1 * q2 + q0 * q3), q0 * q0 - q1 * q1 + q2 * q2 - q3 * q3, 2 * (q2 * q3 - q0 * q1)],
            [2 * (q1 * q3 - q0 * q2), 2 * (q2 * q3 + q0 * q1), q0 * q0 - q1 * q1 - q2 * q2 + q3 * q3],
        ]
    )
    return rot, y.mean(0) - rot @ x.mean(0)


def brute_rmsd(x, y):
    rot, t = quaternion_superposition(x, y)
    return float(np.sqrt(np.mean(np.sum((x @ rot.T + t - y) ** 2, axis=1))))


def brute_lddt(pred, true, mask, cutoff=15.0):
    """Explicit double loop over points; all-atom if inputs are [N, A, 3]."""
    n = pred.shape[0]
    pred = pred.reshape(n, -1, 3)
    true = true.reshape(n, -1, 3)
    mask = mask.reshape(n, -1)
    res_good = np.zeros(n)
    res_count = np.zeros(n)
    for r in range(n):
        for a in range(pred.shape[1]):
            if not mask[r, a]:
                continue
            for s in range(n):
                if s == r:
                    continue
                for b in range(pred.shape[1]):
                    if not mask[s, b]:
                        continue
                    d_true = np.linalg.norm(true[r, a] - true[s, b])
                    if d_true >= cutoff:
                        continue
                    diff = abs(d_true - np.linalg.norm(pred[r, a] - pred[s, b]))
                    res_good[r] += sum(diff < t for t in (0.5, 1.0, 2.0, 4.0)) / 4.0
                    res_count[r] += 1
    per_res = np.where(res_count > 0, res_good / np.maximum(res_count, 1), 1.0)
    return res_good.sum() / res_count.sum(), per_res


def tm_formula(dist, d0, length):
    return float(np.sum(1.0 / (1.0 + (dist / d0) ** 2)) / length)


def brute_tm(x, y):
    """TM-score maximised from EVERY contiguous window (length >= 3) as seed.

    Each seed is refined as the TM-score program does (residues within
    d0_search - 1, then d0_search + 1, cut-off relaxed by 0.5 while < 3).
    A superset of the seeds the library uses, written with plain loops and
    quaternion superposition.
    """
    n = len(x)
    d0 = metrics.tm_d0(n)
    d_search = min(max(d0, 4.5), 8.0)
    best = 0.0
    for length in range(3, n + 1):
        for start in range(n - length + 1):
            idx = list(range(start, start + length))
            cut = d_search - 1.0
            for _ in range(21):
                rot, t = quaternion_superposition(x[idx], y[idx])
                dist = np.linalg.norm(x @ rot.T + t - y, axis=1)
                best = max(best, tm_formula(dist, d0, n))
                c = cut
                while True:
                    new = [i for i in range(n) if dist[i] < c]
                    if len(new) >= 3:
                        break
                    c += 0.5
                if new == idx:
                    break
                idx, cut = new, d_search + 1.0
    return best


# --------------------------------------------------------------------------
# Superposition and RMSD
# --------------------------------------------------------------------------


def test_superimpose_recovers_rigid_motion(ubq_ca):
    rng = np.random.default_rng(0)
    rot = random_rotation(rng)
    t = np.array([30.0, -12.0, 7.5])
    y = ubq_ca @ rot.T + t
    r_fit, t_fit, moved = metrics.superimpose(ubq_ca, y)
    np.testing.assert_allclose(np.asarray(r_fit), rot, atol=1e-4)
    np.testing.assert_allclose(np.asarray(t_fit), t, atol=2e-3)
    np.testing.assert_allclose(np.asarray(moved), y, atol=2e-3)
    assert float(metrics.rmsd(ubq_ca, y)) < 2e-3
    assert float(metrics.rmsd(ubq_ca, y, superimpose=False)) > 10


def test_superimpose_is_a_proper_rotation_for_mirror_images(ubq_ca):
    mirrored = ubq_ca * np.array([1.0, 1.0, -1.0])
    r_fit, _, _ = metrics.superimpose(ubq_ca, mirrored)
    assert float(np.linalg.det(np.asarray(r_fit))) == pytest.approx(1.0, abs=1e-5)
    assert float(metrics.rmsd(ubq_ca, mirrored)) > 1.0  # a reflection cannot be undone


def test_superimpose_ignores_masked_points(ubq_ca):
    rng = np.random.default_rng(1)
    rot = random_rotation(rng)
    y = ubq_ca @ rot.T + 5.0
    mask = np.ones(len(y), bool)
    mask[::7] = False
    y_bad = y.copy()
    y_bad[~mask] += rng.normal(scale=20.0, size=(int((~mask).sum()), 3))
    r_fit, _, moved = metrics.superimpose(ubq_ca, y_bad, mask)
    np.testing.assert_allclose(np.asarray(r_fit), rot, atol=1e-4)
    np.testing.assert_allclose(np.asarray(moved), y, atol=2e-3)  # masked points move too
    assert float(metrics.rmsd(ubq_ca, y_bad, mask)) < 2e-3


def test_rmsd_matches_quaternion_reference(ubq_ca, ubq):
    rng = np.random.default_rng(2)
    pred = ubq_ca + rng.normal(scale=1.5, size=ubq_ca.shape)
    assert float(metrics.rmsd(pred, ubq_ca)) == pytest.approx(brute_rmsd(pred, ubq_ca), abs=1e-4)
    # Without superposition: plain formula.
    direct = np.sqrt(np.mean(np.sum((pred - ubq_ca) ** 2, axis=1)))
    assert float(metrics.rmsd(pred, ubq_ca, superimpose=False)) == pytest.approx(direct, abs=1e-4)
    # Masked: identical to cutting the arrays first.
    mask = np.arange(len(pred)) % 3 != 0
    assert float(metrics.rmsd(pred, ubq_ca, mask)) == pytest.approx(brute_rmsd(pred[mask], ubq_ca[mask]), abs=1e-4)
    # All-atom [N, 37, 3] with the atom mask.
    atoms = ubq.atom_positions.astype(np.float64)
    noisy = atoms + rng.normal(scale=0.7, size=atoms.shape)
    present = ubq.atom_mask > 0
    assert float(metrics.rmsd(noisy, atoms, ubq.atom_mask)) == pytest.approx(
        brute_rmsd(noisy[present], atoms[present]), abs=1e-4
    )


# --------------------------------------------------------------------------
# lDDT
# --------------------------------------------------------------------------


def test_lddt_matches_brute_force_loops(psm_models):
    true, pred = psm_models  # NMR model 1 as "truth", model 2 as "prediction"
    mask = np.ones(len(true))
    mask[[3, 17]] = 0
    expected, expected_per_res = brute_lddt(pred, true, mask)
    assert float(metrics.lddt(pred, true, mask)) == pytest.approx(expected, abs=1e-5)
    np.testing.assert_allclose(
        np.asarray(metrics.lddt(pred, true, mask, per_residue=True)), expected_per_res, atol=1e-5
    )
    for cutoff in (8.0, 30.0):
        expected, _ = brute_lddt(pred, true, np.ones(len(true)), cutoff=cutoff)
        assert float(metrics.lddt(pred, true, cutoff=cutoff)) == pytest.approx(expected, abs=1e-5)


def test_all_atom_lddt_matches_brute_force_loops(ubq):
    rng = np.random.default_rng(3)
    true = ubq.atom_positions[:12].astype(np.float64)
    mask = ubq.atom_mask[:12]
    pred = true + rng.normal(scale=0.8, size=true.shape)
    expected, expected_per_res = brute_lddt(pred, true, mask)
    assert float(metrics.lddt(pred, true, mask)) == pytest.approx(expected, abs=1e-5)
    np.testing.assert_allclose(
        np.asarray(metrics.lddt(pred, true, mask, per_residue=True)), expected_per_res, atol=1e-5
    )


def test_lddt_ca_uses_ca_atoms(ubq):
    rng = np.random.default_rng(4)
    pred = ubq.atom_positions + rng.normal(scale=1.0, size=ubq.atom_positions.shape)
    got = metrics.lddt_ca(pred, ubq.atom_positions, ubq.atom_mask, per_residue=True)
    want = metrics.lddt(pred[:, CA], ubq.atom_positions[:, CA], ubq.atom_mask[:, CA], per_residue=True)
    assert got.shape == (ubq.num_res,)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert float(metrics.lddt_ca(ubq.atom_positions, ubq.atom_positions, ubq.atom_mask)) == pytest.approx(1.0)


def test_lddt_is_jittable(psm_models):
    true, pred = psm_models
    jitted = jax.jit(metrics.lddt, static_argnames=("per_residue",))
    assert float(jitted(pred, true, None, 15.0)) == pytest.approx(float(metrics.lddt(pred, true)), abs=1e-6)


# --------------------------------------------------------------------------
# Identity, rigid motions, known perturbations
# --------------------------------------------------------------------------


def test_identity_gives_perfect_scores(ubq_ca, ubq):
    assert float(metrics.lddt(ubq_ca, ubq_ca)) == pytest.approx(1.0)
    assert float(metrics.lddt(ubq.atom_positions, ubq.atom_positions, ubq.atom_mask)) == pytest.approx(1.0)
    assert float(metrics.rmsd(ubq_ca, ubq_ca)) == pytest.approx(0.0, abs=1e-3)
    assert metrics.tm_score(ubq_ca, ubq_ca) == pytest.approx(1.0, abs=1e-12)
    assert metrics.gdt_ts(ubq_ca, ubq_ca) == 1.0


def test_rigid_motion_changes_nothing(ubq_ca):
    rng = np.random.default_rng(5)
    pred = ubq_ca + rng.normal(scale=2.0, size=ubq_ca.shape)
    moved = pred @ random_rotation(rng).T + np.array([-40.0, 25.0, 60.0])
    assert float(metrics.rmsd(moved, ubq_ca)) == pytest.approx(float(metrics.rmsd(pred, ubq_ca)), abs=1e-4)
    assert metrics.tm_score(moved, ubq_ca) == pytest.approx(metrics.tm_score(pred, ubq_ca), abs=1e-9)
    assert metrics.gdt_ts(moved, ubq_ca) == pytest.approx(metrics.gdt_ts(pred, ubq_ca), abs=1e-9)
    assert float(metrics.lddt(moved, ubq_ca)) == pytest.approx(float(metrics.lddt(pred, ubq_ca)), abs=1e-6)
    # Identity after a rigid motion is still perfect.
    rigid = ubq_ca @ random_rotation(rng).T + 100.0
    assert metrics.tm_score(rigid, ubq_ca) == pytest.approx(1.0, abs=1e-9)
    assert metrics.gdt_ts(rigid, ubq_ca) == 1.0
    assert float(metrics.lddt(rigid, ubq_ca)) == pytest.approx(1.0)


def test_block_displacement_known_values(ubq_ca):
    """Residues 51-76 are rotated by 90 degrees and moved 100 A away.

    The best superposition is then the one on residues 1-50, so TM-score and
    GDT have closed forms (the far block contributes ~0 and nothing can be
    gained by compromising); RMSD and lDDT are checked against the naive
    references.
    """
    true = ubq_ca
    n, n_fixed = len(true), 50
    pred = true.copy()
    block = pred[n_fixed:]
    pred[n_fixed:] = (block - block.mean(0)) @ rotation_about([1, 2, 3], np.pi / 2).T + block.mean(0) + [100.0, 0, 0]

    dist = np.linalg.norm(pred - true, axis=1)  # block 1 is already superimposed
    assert np.allclose(dist[:n_fixed], 0)
    expected_tm = tm_formula(dist, metrics.tm_d0(n), n)
    assert metrics.tm_score(pred, true) == pytest.approx(expected_tm, abs=1e-5)
    assert metrics.gdt_ts(pred, true) == pytest.approx(n_fixed / n, abs=1e-12)
    assert float(metrics.rmsd(pred, true)) == pytest.approx(brute_rmsd(pred, true), abs=1e-3)
    expected_lddt, expected_per_res = brute_lddt(pred, true, np.ones(n))
    assert float(metrics.lddt(pred, true)) == pytest.approx(expected_lddt, abs=1e-5)
    np.testing.assert_allclose(np.asarray(metrics.lddt(pred, true, per_residue=True)), expected_per_res, atol=1e-5)
    # Residues with no moved residue within the cut-off keep a perfect score.
    far = [r for r in range(n_fixed) if np.linalg.norm(true[n_fixed:] - true[r], axis=1).min() >= 15.0]
    assert far and np.all(expected_per_res[far] == 1.0)


def test_small_noise_keeps_gdt_perfect(ubq_ca):
    rng = np.random.default_rng(6)
    pred = ubq_ca + rng.uniform(-0.25, 0.25, size=ubq_ca.shape)  # every residue within 0.44 A
    assert metrics.gdt_ts(pred, ubq_ca) == 1.0
    # TM at the least-squares superposition is a lower bound that is nearly tight here.
    rot, t = quaternion_superposition(pred, ubq_ca)
    at_lsq = tm_formula(np.linalg.norm(pred @ rot.T + t - ubq_ca, axis=1), metrics.tm_d0(len(pred)), len(pred))
    tm = metrics.tm_score(pred, ubq_ca)
    assert at_lsq - 1e-9 <= tm <= at_lsq + 1e-3


@pytest.mark.parametrize("case", ["nmr", "noise"])
def test_tm_score_matches_brute_search(psm_models, case):
    true, pred = psm_models
    if case == "noise":
        pred = true + np.random.default_rng(7).normal(scale=2.0, size=true.shape)
    expected = brute_tm(pred, true)
    got = metrics.tm_score(pred, true)
    # The library searches a subset of the brute seeds with the same refinement.
    assert expected - 5e-3 <= got <= expected + 1e-9
    # And it is a real maximum: no better than the brute force, never below a
    # plain least-squares superposition.
    rot, t = quaternion_superposition(pred, true)
    assert (
        got >= tm_formula(np.linalg.norm(pred @ rot.T + t - true, axis=1), metrics.tm_d0(len(true)), len(true)) - 1e-9
    )


def test_gdt_per_cutoff_maximum(psm_models):
    """GDT-TS against a brute search of each cut-off separately."""
    true, pred = psm_models
    n = len(true)
    best = {c: 0.0 for c in (1.0, 2.0, 4.0, 8.0)}
    # Seeds: windows of every length >= 3 (every third start, to stay quick),
    # refined on the residues within c.
    for c in best:
        for length in range(3, n + 1):
            for start in range(0, n - length + 1, 3):
                idx = list(range(start, start + length))
                for _ in range(21):
                    rot, t = quaternion_superposition(pred[idx], true[idx])
                    dist = np.linalg.norm(pred @ rot.T + t - true, axis=1)
                    for cc in best:
                        best[cc] = max(best[cc], float(np.mean(dist <= cc)))
                    cut = c
                    while True:
                        new = [i for i in range(n) if dist[i] < cut]
                        if len(new) >= 3:
                            break
                        cut += 0.5
                    if new == idx:
                        break
                    idx = new
    expected = float(np.mean(list(best.values())))
    got = metrics.gdt_ts(pred, true)
    assert got == pytest.approx(expected, abs=1.0 / n + 1e-9)  # within one residue at one cut-off
    assert 0 < got <= 1


def test_masks_and_normalisation_length(ubq_ca):
    rng = np.random.default_rng(8)
    pred = ubq_ca + rng.normal(scale=1.0, size=ubq_ca.shape)
    mask = np.ones(len(pred), bool)
    mask[:10] = False
    pred_bad = pred.copy()
    pred_bad[:10] += 50.0  # would hurt every score if it were not masked
    assert metrics.tm_score(pred_bad, ubq_ca, mask) == pytest.approx(
        metrics.tm_score(pred[10:], ubq_ca[10:]), abs=1e-12
    )
    assert metrics.gdt_ts(pred_bad, ubq_ca, mask) == pytest.approx(metrics.gdt_ts(pred[10:], ubq_ca[10:]), abs=1e-12)
    # seq_len: identical structures score (residues compared) / seq_len.
    assert metrics.tm_score(ubq_ca[10:], ubq_ca[10:], seq_len=100) == pytest.approx(66 / 100)
    assert metrics.tm_d0(100) == pytest.approx(1.24 * 85 ** (1 / 3) - 1.8)
    assert metrics.tm_d0(21) == 0.5 and metrics.tm_d0(5) == 0.5
    assert isinstance(metrics.tm_score(pred, ubq_ca), float) and isinstance(metrics.gdt_ts(pred, ubq_ca), float)
    with pytest.raises(ValueError):
        metrics.tm_score(pred, ubq_ca[:-1])
    with pytest.raises(ValueError):
        metrics.lddt(pred, ubq_ca, np.ones(3))


def test_nmr_models_give_plausible_scores(structures):
    text = first_two_models(structures / "mmcif/2crb.cif")
    m1, m2 = (protein.from_mmcif_string(text, model=m) for m in (0, 1))
    a, b = m2.atom_positions[:, CA], m1.atom_positions[:, CA]
    r = float(metrics.rmsd(a, b))
    tm = metrics.tm_score(a, b)
    gdt = metrics.gdt_ts(a, b)
    ld = float(metrics.lddt_ca(m2.atom_positions, m1.atom_positions, m1.atom_mask))
    assert 0.3 < r < 6.0
    assert 0.3 < tm < 1.0
    assert 0.3 < gdt < 1.0
    assert 0.5 < ld < 1.0


def _dm_lddt_per_residue_f32(pred, true, mask):
    """DeepMind's `lddt.py` in float32 numpy, operation for operation (reciprocal of the count, then
    multiplied by the score sum)."""
    f = np.float32
    dt = np.sqrt(f(1e-10) + ((true[:, None] - true[None]) ** 2).sum(-1, dtype=f)).astype(f)
    dp = np.sqrt(f(1e-10) + ((pred[:, None] - pred[None]) ** 2).sum(-1, dtype=f)).astype(f)
    to_score = ((dt < 15).astype(f) * mask[:, None] * mask[None] * (f(1) - np.eye(len(true), dtype=f))).astype(f)
    l1 = np.abs(dt - dp)
    score = f(0.25) * sum((l1 < t).astype(f) for t in (0.5, 1.0, 2.0, 4.0))
    norm = f(1) / (f(1e-10) + to_score.sum(-1, dtype=f))
    return norm * (f(1e-10) + (to_score * score).sum(-1, dtype=f))


def test_lddt_at_a_bin_edge_matches_deepmind_bit_for_bit():
    # Residue 0 has 25 scored neighbours with pair scores summing to 7.5: lDDT "0.3". In fp32,
    # 7.5 / 25 = 0.3 (pLDDT bin 15 of 50) but DeepMind's (1 / 25) * 7.5 = 0.29999998 (bin 14).
    rng = np.random.default_rng(0)
    dirs = rng.normal(size=(25, 3))
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    # |d_true - d_pred| per neighbour -> pair score: 0 -> 1, 0.7 -> 0.75, 1.5 -> 0.5, 3 -> 0.25, 6 -> 0.
    errors = np.array([0.0] * 3 + [0.7] * 3 + [1.5] * 3 + [3.0] * 3 + [6.0] * 13)
    assert errors.size == 25
    true = np.concatenate([np.zeros((1, 3)), 10.0 * dirs]).astype(np.float32)
    pred = np.concatenate([np.zeros((1, 3)), (10.0 + errors)[:, None] * dirs]).astype(np.float32)
    mask = np.ones(26, np.float32)
    got = np.asarray(metrics.lddt(pred, true, mask, per_residue=True))
    expected = _dm_lddt_per_residue_f32(pred, true, mask)
    assert expected[0] == np.float32(0.29999998)  # the construction hits the edge
    np.testing.assert_array_equal(got, expected)
    assert int(np.floor(got[0] * 50)) == 14  # DeepMind's pLDDT bin, not 15
