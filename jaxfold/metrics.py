"""Structure comparison metrics: superposition, RMSD, lDDT, TM-score, GDT-TS.

Return-type convention:

* ``superimpose``, ``rmsd``, ``lddt`` and ``lddt_ca`` are array maths written
  with ``jax.numpy``: they accept numpy or jax arrays, can be ``jax.jit``-ed
  or ``vmap``-ed, and return jax arrays (0-d for scalars).
* ``tm_score`` and ``gdt_ts`` need a data-dependent search over
  superpositions, so they run on the host in float64 numpy and return Python
  floats.

Masks are 1 (or True) for points that take part and 0 for points that do
not; a point masked out in either structure should be masked out here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxfold.common import residue_constants

__all__ = [
    "superimpose",
    "rmsd",
    "lddt",
    "lddt_ca",
    "tm_score",
    "gdt_ts",
    "tm_d0",
]

_GDT_TS_CUTOFFS = (1.0, 2.0, 4.0, 8.0)


# --------------------------------------------------------------------------
# Superposition and RMSD (jax.numpy)
# --------------------------------------------------------------------------


def _flatten_points(x, y, mask):
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    if x.shape != y.shape or x.shape[-1] != 3:
        raise ValueError(f"point arrays must share a shape [..., 3], got {x.shape} and {y.shape}")
    if mask is None:
        w = jnp.ones(x.shape[:-1], dtype=x.dtype)
    else:
        w = jnp.asarray(mask).astype(x.dtype)
        if w.shape != x.shape[:-1]:
            raise ValueError(f"mask must have shape {x.shape[:-1]}, got {w.shape}")
    return x.reshape(-1, 3), y.reshape(-1, 3), w.reshape(-1)


def superimpose(x, y, mask=None):
    """Optimal rigid superposition of ``x`` onto ``y`` (Kabsch).

    Finds the proper rotation ``R`` (det +1) and translation ``t`` minimising
    ``sum_i mask_i |R x_i + t - y_i|^2``.

    Args:
      x: ``[..., 3]`` points to move (e.g. predicted Cα, ``[N, 3]``).
      y: ``[..., 3]`` reference points, same shape.
      mask: optional ``[...]`` weights (1 = use the point).

    Returns:
      ``(rotation [3, 3], translation [3], x_transformed [..., 3])`` as jax
      arrays, with ``x_transformed = x @ rotation.T + translation``.  Every
      point is transformed, masked or not.
    """
    shape = jnp.shape(x)
    xf, yf, w = _flatten_points(x, y, mask)
    rot, trans = _kabsch(xf, yf, w)
    moved = (xf @ rot.T + trans).reshape(shape)
    return rot, trans, moved


@jax.jit
def _kabsch(xf, yf, w):
    """Weighted Kabsch on flat ``[n, 3]`` points: (rotation, translation)."""
    wsum = jnp.maximum(jnp.sum(w), 1e-12)
    cx = jnp.sum(w[:, None] * xf, axis=0) / wsum
    cy = jnp.sum(w[:, None] * yf, axis=0) / wsum
    # Cross-covariance H = sum_i w_i (x_i - cx)(y_i - cy)^T.
    h = jnp.einsum("n,ni,nj->ij", w, xf - cx, yf - cy)
    u, _, vt = jnp.linalg.svd(h)
    # Flip the axis of the smallest singular value if the best orthogonal
    # matrix is a reflection, so the result is always a proper rotation.
    d = jnp.sign(jnp.linalg.det(vt.T @ u.T))
    d = jnp.where(d == 0, 1.0, d)
    fix = jnp.diag(jnp.ones((3,), h.dtype).at[2].set(d))
    rot = vt.T @ fix @ u.T
    return rot, cy - rot @ cx


def rmsd(pred, true, mask=None, superimpose: bool = True):
    """Root-mean-square deviation between two point sets.

    Args:
      pred: ``[..., 3]`` points (e.g. Cα ``[N, 3]``, or atom37 ``[N, 37, 3]``
        with an atom mask).
      true: ``[..., 3]`` reference points.
      mask: optional ``[...]`` mask of points to use (superposition and RMSD).
      superimpose: if True (default) ``pred`` is first optimally superimposed
        onto ``true`` (Kabsch), giving e.g. the usual Cα RMSD; if False the
        coordinates are compared as given.

    Returns:
      0-d jax array, in the units of the input (angstroms).
    """
    if superimpose:
        _, _, pred = _superimpose(pred, true, mask)
    p, t, w = _flatten_points(pred, true, mask)
    sq = jnp.sum((p - t) ** 2, axis=-1)
    return jnp.sqrt(jnp.sum(w * sq) / jnp.maximum(jnp.sum(w), 1e-12))


_superimpose = superimpose  # rmsd's keyword argument shadows the function name.


# --------------------------------------------------------------------------
# lDDT (jax.numpy)
# --------------------------------------------------------------------------


def lddt(pred, true, mask=None, cutoff: float = 15.0, per_residue: bool = False):
    """lDDT score as in AlphaFold's ``alphafold/model/lddt.py``.

    Pairs scored: both points present in ``mask``, distance in the TRUE
    structure below ``cutoff``, and not a point with itself.  Each pair scores
    the fraction of the thresholds 0.5, 1, 2, 4 Å that the absolute distance
    difference ``|d_true - d_pred|`` falls under (strictly).  No superposition
    is involved; no stereochemistry term.

    Normalisation follows AlphaFold exactly, small epsilons included:

    * ``per_residue=False``: sum of pair scores over ALL scored pairs divided
      by the number of scored pairs (a pair-weighted mean, not the mean of
      the per-residue values).
    * ``per_residue=True``: for each residue, the mean over the scored pairs
      whose first point belongs to that residue.  A residue with no scored
      pair (masked, or isolated) gets 1.0, AlphaFold's epsilon convention;
      weight per-residue values by the mask when averaging.

    Args:
      pred: ``[N, 3]`` (one point per residue, e.g. Cα) or ``[N, A, 3]``
        (A atoms per residue, e.g. atom37) predicted coordinates.
      true: true coordinates, same shape.
      mask: ``[N]`` or ``[N, A]`` mask of points present in the true
        structure (default all ones).
      cutoff: inclusion radius in the true structure, Å.
      per_residue: return ``[N]`` per-residue scores instead of a scalar.

    With ``[N, A, 3]`` input the points are all atoms; pairs of atoms within
    one residue are excluded (as in the all-atom lDDT of Mariani et al.), and
    per-residue scores pool the pairs of all atoms of the residue.  Cost and
    memory grow as ``(N*A)^2``.

    Returns:
      jax array: scalar, or ``[N]`` when ``per_residue``.
    """
    pred = jnp.asarray(pred)
    true = jnp.asarray(true)
    if pred.shape != true.shape or pred.shape[-1] != 3 or pred.ndim not in (2, 3):
        raise ValueError(f"lddt expects pred/true of equal shape [N, 3] or [N, A, 3], got {pred.shape}, {true.shape}")
    dtype = jnp.result_type(pred.dtype, jnp.float32)
    if mask is None:
        mask = jnp.ones(pred.shape[:-1], dtype)
    mask = jnp.asarray(mask).astype(dtype)
    if mask.shape != pred.shape[:-1]:
        raise ValueError(f"lddt mask must have shape {pred.shape[:-1]}, got {mask.shape}")
    return _lddt_core(pred.astype(dtype), true.astype(dtype), mask, jnp.asarray(cutoff, dtype), bool(per_residue))


@functools.partial(jax.jit, static_argnums=(4,))
def _lddt_core(pred, true, mask, cutoff, per_residue):
    n = pred.shape[0]
    atoms = 1 if pred.ndim == 2 else pred.shape[1]
    dtype = pred.dtype
    p = pred.reshape(n * atoms, 3)
    t = true.reshape(n * atoms, 3)
    m = mask.reshape(n * atoms)

    # The 1e-10 inside the square roots is AlphaFold's (keeps gradients finite).
    dmat_true = jnp.sqrt(1e-10 + jnp.sum((t[:, None] - t[None, :]) ** 2, axis=-1))
    dmat_pred = jnp.sqrt(1e-10 + jnp.sum((p[:, None] - p[None, :]) ** 2, axis=-1))
    residue_of = jnp.repeat(jnp.arange(n), atoms)
    not_same = (residue_of[:, None] != residue_of[None, :]).astype(dtype)
    to_score = (dmat_true < cutoff).astype(dtype) * m[:, None] * m[None, :] * not_same

    l1 = jnp.abs(dmat_true - dmat_pred)
    score = 0.25 * sum((l1 < thr).astype(dtype) for thr in (0.5, 1.0, 2.0, 4.0))

    if per_residue:
        count = jnp.sum(to_score.reshape(n, atoms * n * atoms), axis=-1)
        good = jnp.sum((to_score * score).reshape(n, atoms * n * atoms), axis=-1)
    else:
        count = jnp.sum(to_score)
        good = jnp.sum(to_score * score)
    # DeepMind's order of operations (reciprocal, then product): `good / count` rounds differently in
    # fp32, e.g. 7.5 / 25 is 0.3 but (1 / 25) * 7.5 is 0.29999998, and at a bin edge that moves the
    # pLDDT target to the next bin.
    norm = 1.0 / (1e-10 + count)
    return norm * (1e-10 + good)


def lddt_ca(pred, true, mask=None, cutoff: float = 15.0, per_residue: bool = False):
    """Cα lDDT: :func:`lddt` on the CA atoms of atom37 coordinates.

    Args:
      pred: ``[N, 37, 3]`` predicted atom37 positions (or ``[N, 3]`` Cα).
      true: true positions, same shape.
      mask: ``[N, 37]`` atom mask of the true structure (or ``[N]``).

    Returns:
      As :func:`lddt`.
    """
    pred = jnp.asarray(pred)
    true = jnp.asarray(true)
    if pred.ndim == 3:
        ca = residue_constants.atom_order["CA"]
        pred = pred[:, ca]
        true = true[:, ca]
        if mask is not None:
            mask = jnp.asarray(mask)[:, ca]
    return lddt(pred, true, mask, cutoff=cutoff, per_residue=per_residue)


# --------------------------------------------------------------------------
# TM-score and GDT (host-side numpy search)
# --------------------------------------------------------------------------


def tm_d0(seq_len: int) -> float:
    """TM-score distance scale d0 for normalisation length ``seq_len``.

    ``1.24 (L - 15)^(1/3) - 1.8``, floored at 0.5 Å as the TM-score program
    does for short chains (the formula drops below 0.5 for L <= 21).
    """
    if seq_len <= 21:
        return 0.5
    return max(1.24 * (seq_len - 15.0) ** (1.0 / 3.0) - 1.8, 0.5)


def _masked_points(pred, true, mask) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(pred, dtype=np.float64)
    y = np.asarray(true, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 2 or x.shape[-1] != 3:
        raise ValueError(f"expected pred/true of equal shape [N, 3], got {x.shape} and {y.shape}")
    if mask is not None:
        keep = np.asarray(mask).astype(bool)
        if keep.shape != x.shape[:1]:
            raise ValueError(f"mask must have shape {x.shape[:1]}, got {keep.shape}")
        x, y = x[keep], y[keep]
    # Centring both sets does not change any superposition score and keeps
    # the float64 covariance sums well conditioned.
    if len(x):
        x = x - x.mean(0)
        y = y - y.mean(0)
    return x, y


def _fragment_lengths(n: int) -> list[int]:
    """Seed fragment lengths n, n/2, n/4, ... down to 4 (TM-score's L_ini)."""
    l_min = min(4, n)
    lengths = []
    for k in range(5):  # At most 6 lengths, as in the TM-score program.
        length = n // (2**k)
        if length <= l_min:
            break
        lengths.append(length)
    lengths.append(l_min)
    return lengths


def _seed_masks(n: int) -> np.ndarray:
    """All contiguous fragments of the seed lengths, one boolean row each."""
    rows = []
    for length in _fragment_lengths(n):
        for start in range(n - length + 1):
            row = np.zeros(n, bool)
            row[start : start + length] = True
            rows.append(row)
    return np.stack(rows)


def _batched_kabsch(x, y, xy, sel) -> tuple[np.ndarray, np.ndarray]:
    """Kabsch on the rows of ``sel`` ([S, n] bool) at once: R [S,3,3], t [S,3].

    ``xy`` is the precomputed ``[n, 9]`` table of outer products x_i y_i^T,
    so every covariance is one matrix product.
    """
    w = sel.astype(np.float64)
    wsum = w.sum(1)
    cx = (w @ x) / wsum[:, None]
    cy = (w @ y) / wsum[:, None]
    h = (w @ xy).reshape(-1, 3, 3) - wsum[:, None, None] * cx[:, :, None] * cy[:, None, :]
    u, _, vt = np.linalg.svd(h)
    v = np.swapaxes(vt, 1, 2)
    ut = np.swapaxes(u, 1, 2)
    # Proper rotation: flip the last singular direction when V U^T is a reflection.
    d = np.sign(np.linalg.det(v @ ut))
    d[d == 0] = 1.0
    v[:, :, 2] *= d[:, None]
    rot = v @ ut
    trans = cy - np.einsum("sij,sj->si", rot, cx)
    return rot, trans


def _select_close(dist: np.ndarray, d: float) -> np.ndarray:
    """Residues closer than ``d`` after superposition (TM-score's score_fun).

    As in the TM-score program, when fewer than 3 residues qualify (and there
    are more than 3 in all) the cut-off grows in steps of 0.5 Å until at
    least 3 do.
    """
    n = dist.shape[1]
    thr = np.full(dist.shape[0], d)
    if n > 3:
        third = np.partition(dist, 2, axis=1)[:, 2]
        steps = np.where(third < d, 0.0, np.floor((third - d) / 0.5) + 1.0)
        thr = d + 0.5 * steps
        # Guard the boundary against rounding in the closed form above.
        thr = np.where(third < thr, thr, thr + 0.5)
    sel = dist < thr[:, None]
    empty = ~sel.any(1)
    if empty.any():  # Only possible for n <= 3: fall back on all residues.
        sel[empty] = True
    return sel


def _fragment_search(
    x: np.ndarray,
    y: np.ndarray,
    d_first: float,
    d_iter: float,
    scores: Callable[[np.ndarray], np.ndarray],
    n_iter: int = 20,
    chunk: int = 512,
) -> np.ndarray:
    """The TM-score program's superposition search, vectorised over seeds.

    Every contiguous fragment of length n, n/2, n/4, ..., 4 (all start
    positions) seeds a superposition.  After the seed superposition, the
    residues within ``d_first`` are selected and re-superimposed; thereafter
    the residues within ``d_iter``, for up to ``n_iter`` rounds or until the
    selection stops changing.  ``scores`` maps distances ``[S, n]`` after
    every superposition tried to ``[S, k]`` scores; the maximum of each
    column over everything tried is returned.

    """
    seeds = _seed_masks(len(x))
    xy = (x[:, :, None] * y[:, None, :]).reshape(-1, 9)
    best = None
    for lo in range(0, len(seeds), chunk):
        sel = seeds[lo : lo + chunk]
        for it in range(n_iter + 1):
            rot, trans = _batched_kabsch(x, y, xy, sel)
            moved = np.matmul(x[None], np.swapaxes(rot, 1, 2)) + trans[:, None, :]
            dist = np.sqrt(np.sum((moved - y[None]) ** 2, axis=-1))
            s = scores(dist).max(axis=0)
            best = s if best is None else np.maximum(best, s)
            if it == n_iter:
                break
            new_sel = _select_close(dist, d_first if it == 0 else d_iter)
            if it > 0:
                # A seed whose selection repeats would only repeat its last
                # superposition: drop it (TM-score's convergence test).
                changed = np.any(new_sel != sel, axis=1)
                new_sel = new_sel[changed]
            if len(new_sel) == 0:
                break
            sel = new_sel
    return best


def _tm_and_gdt_scores(d0: float, norm: float, cutoffs: Sequence[float]):
    cut = np.asarray(cutoffs, dtype=np.float64)

    def scores(dist):
        tm = np.sum(1.0 / (1.0 + (dist / d0) ** 2), axis=1) / norm
        gdt = np.sum(dist[:, :, None] <= cut, axis=1) / norm
        return np.concatenate([tm[:, None], gdt], axis=1)

    return scores


def tm_score(pred, true, mask=None, seq_len: int | None = None) -> float:
    """TM-score of ``pred`` against ``true`` (residue i corresponds to i).

    ``TM = max over superpositions of (1/L) sum_i 1 / (1 + (d_i / d0)^2)``
    with ``d0 = tm_d0(L)`` and ``L = seq_len`` (default: the number of
    residues in ``mask``).  The maximum is searched with the TM-score
    program's heuristic: seed superpositions on every contiguous fragment of
    length L_ali, L_ali/2, ..., 4, then iteratively re-superimpose on the
    residues within ``d0_search - 1`` (first round) / ``d0_search + 1``
    (later rounds, up to 20), with ``d0_search = clip(d0, 4.5, 8)`` and the
    cut-off growing by 0.5 Å while fewer than 3 residues qualify.
    Simplification: all fragment start positions are tried (the program does
    the same for its default mode) and the search runs in float64 numpy.

    Args:
      pred: ``[N, 3]`` predicted Cα coordinates.
      true: ``[N, 3]`` true Cα coordinates.
      mask: optional ``[N]`` residues to compare.
      seq_len: normalisation length (e.g. full target length when ``mask``
        hides unobserved residues); default the number of masked residues.

    Returns:
      Python float in [0, 1] (0.0 when no residue is compared).
    """
    x, y = _masked_points(pred, true, mask)
    length = int(seq_len) if seq_len is not None else len(x)
    if len(x) == 0 or length <= 0:
        return 0.0
    d0 = tm_d0(length)
    d0_search = min(max(d0, 4.5), 8.0)
    best = _fragment_search(x, y, d0_search - 1.0, d0_search + 1.0, _tm_and_gdt_scores(d0, length, ()))
    return float(best[0])


def gdt_ts(pred, true, mask=None) -> float:
    """GDT-TS of ``pred`` against ``true`` (residue i corresponds to i).

    ``GDT_TS = mean over c in (1, 2, 4, 8) Å of max over superpositions of
    the fraction of residues within c`` (distance <= c), normalised by the
    number of residues in ``mask``.  Each cut-off is maximised separately
    (the LGA definition).  Superpositions searched: those of the TM-score
    search (see :func:`tm_score`) plus, for each cut-off c, the same
    fragment-seeded iteration keeping the residues within c.

    Args:
      pred, true: ``[N, 3]`` Cα coordinates.
      mask: optional ``[N]`` residues to compare.

    Returns:
      Python float in [0, 1] (0.0 when no residue is compared).
    """
    x, y = _masked_points(pred, true, mask)
    n = len(x)
    if n == 0:
        return 0.0
    d0 = tm_d0(n)
    d0_search = min(max(d0, 4.5), 8.0)
    scores = _tm_and_gdt_scores(d0, n, _GDT_TS_CUTOFFS)
    best = _fragment_search(x, y, d0_search - 1.0, d0_search + 1.0, scores)
    for c in _GDT_TS_CUTOFFS:
        best = np.maximum(best, _fragment_search(x, y, c, c, scores))
    return float(np.mean(best[1:]))
