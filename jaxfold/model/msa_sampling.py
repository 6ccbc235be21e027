"""AlphaFold-Multimer's in-model MSA processing (DeepMind `modules_multimer.py`, v2.3.2).

The multimer model receives the whole MSA (`msa [N_msa, N_res]`, `deletion_matrix`, `msa_mask`, `bert_mask`,
`cluster_bias_mask [N_msa]`) and, inside every recycling pass, samples `num_msa` cluster centres with the
Gumbel trick (the rest become the extra MSA), corrupts the clusters for the masked-MSA head (BERT), assigns
every extra sequence to its nearest cluster and builds `msa_feat [num_msa, N_res, 49]` and
`extra_msa_feat [num_extra_msa, N_res, 25]`.

Random numbers are drawn exactly as DeepMind's code draws them, so the same key gives the same batch:
- `padding_consistent_uniform` draws element (i, j, ...) from `fold_in(fold_in(key, i), j)...` (AlphaFold's
  `utils.padding_consistent_rng`), so padding never changes the draws of real entries;
- the keys must be split with JAX's original (non-partitionable) threefry layout, the default of the JAX
  that AlphaFold 2.3 runs on; `deepmind_keys()` switches it on for the code traced inside it.
All functions are pure and take/return dicts of arrays (no parameters).
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp

GUMBEL_EPSILON = 1e-6


def deepmind_keys():
    """Context in which `jax.random` splits and draws as in JAX < 0.5 (`jax_threefry_partitionable=False`).

    Use it around tracing of code whose random numbers must match DeepMind's AlphaFold (JAX 0.4.x).
    """
    if hasattr(jax, "threefry_partitionable"):
        return jax.threefry_partitionable(False)
    if not jax.config.jax_threefry_partitionable:  # older JAX: already the original layout
        return contextlib.nullcontext()
    raise RuntimeError(
        "this JAX offers no way to select the original threefry key layout, which "
        "AlphaFold-Multimer's in-model MSA sampling needs to reproduce DeepMind's draws"
    )


def _grid_keys(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    if not shape:
        return key
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(shape[0]))
    return jax.vmap(lambda k: _grid_keys(k, shape[1:]))(keys)


def padding_consistent_uniform(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Uniform [0, 1) float32 of `shape`, one scalar draw per element from its own folded-in key."""
    keys = _grid_keys(key, tuple(shape)).reshape(-1, 2)
    draws = jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32, 0.0, 1.0))(keys)
    return draws.reshape(shape)


def gumbel_noise(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Gumbel(0, 1) samples (AlphaFold's `gumbel_noise`)."""
    uniform = padding_consistent_uniform(key, shape)
    return -jnp.log(-jnp.log(uniform + GUMBEL_EPSILON) + GUMBEL_EPSILON)


def gumbel_argsort_sample_idx(key: jax.Array, logits: jax.Array) -> jax.Array:
    """A random permutation `[N]`, rows of larger logit first in distribution (unstable sort, as AlphaFold)."""
    z = gumbel_noise(key, logits.shape)
    iota = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    _, perm = jax.lax.sort_key_val(logits + z, iota, dimension=-1, is_stable=False)
    return perm[::-1]


def make_msa_profile(batch: dict) -> jax.Array:
    """Masked mean of the one-hot MSA over sequences, `[N_res, 22]` (`utils.mask_mean`, eps 1e-10)."""
    mask = batch["msa_mask"][:, :, None]
    value = jax.nn.one_hot(batch["msa"], 22)
    return jnp.sum(mask * value, axis=0) / (jnp.sum(mask, axis=0) + 1e-10)


def sample_msa(key: jax.Array, batch: dict, max_seq: int) -> tuple[dict, dict]:
    """Sample `max_seq` cluster rows (rows with residues first, `cluster_bias_mask` rows always); the other
    rows become `extra_*`. Returns the new batch and `{'index_order', 'logits'}` for inspection."""
    batch = dict(batch)
    logits = (jnp.clip(jnp.sum(batch["msa_mask"], axis=-1), 0.0, 1.0) - 1.0) * 1e6
    if "cluster_bias_mask" in batch:
        cluster_bias_mask = batch["cluster_bias_mask"]
    else:
        cluster_bias_mask = jnp.pad(jnp.zeros(batch["msa"].shape[0] - 1), (1, 0), constant_values=1.0)
    logits = logits + cluster_bias_mask * 1e6
    index_order = gumbel_argsort_sample_idx(key, logits)
    sel_idx, extra_idx = index_order[:max_seq], index_order[max_seq:]
    for k in ("msa", "deletion_matrix", "msa_mask", "bert_mask"):
        if k in batch:
            batch["extra_" + k] = batch[k][extra_idx]
            batch[k] = batch[k][sel_idx]
    return batch, {"index_order": index_order, "logits": logits}


def make_masked_msa(batch: dict, key: jax.Array, config, epsilon: float = 1e-6) -> dict:
    """BERT corruption of the sampled clusters: `msa` becomes the corrupted MSA (float32, as AlphaFold's),
    `true_msa` the original, `bert_mask` the corrupted positions. `config`: `embeddings_and_evoformer.masked_msa`."""
    batch = dict(batch)
    random_aa = jnp.array([0.05] * 20 + [0.0, 0.0], dtype=jnp.float32)
    categorical_probs = (
        config.uniform_prob * random_aa
        + config.profile_prob * batch["msa_profile"]
        + config.same_prob * jax.nn.one_hot(batch["msa"], 22)
    )
    mask_prob = 1.0 - config.profile_prob - config.same_prob - config.uniform_prob
    if mask_prob < 0.0:
        raise ValueError(f"masked_msa probabilities sum to more than 1 (mask probability {mask_prob})")
    pad = [(0, 0)] * (categorical_probs.ndim - 1) + [(0, 1)]
    categorical_probs = jnp.pad(categorical_probs, pad, constant_values=mask_prob)
    shape = batch["msa"].shape
    _, mask_key, gumbel_key = jax.random.split(key, 3)
    mask_position = padding_consistent_uniform(mask_key, shape) < config.replace_fraction
    mask_position = mask_position * batch["msa_mask"]
    logits = jnp.log(categorical_probs + epsilon)
    sampled = jnp.argmax(logits + gumbel_noise(gumbel_key, logits.shape), axis=-1)
    bert_msa = jnp.where(mask_position != 0, sampled, batch["msa"]) * batch["msa_mask"]
    position = mask_position.astype(jnp.float32)
    batch["bert_mask"] = batch["bert_mask"] * position if "bert_mask" in batch else position
    batch["true_msa"] = batch["msa"]
    batch["msa"] = bert_msa
    return batch


def nearest_neighbor_clusters(batch: dict, gap_agreement_weight: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """Soft-assign every extra sequence to its most similar cluster; returns `cluster_profile
    [N_clust, N_res, 23]` and `cluster_deletion_mean [N_clust, N_res]` (the cluster itself included)."""
    weights = jnp.array([1.0] * 21 + [gap_agreement_weight] + [0.0], dtype=jnp.float32)
    msa_mask, extra_mask = batch["msa_mask"], batch["extra_msa_mask"]
    msa_one_hot = msa_mask[:, :, None] * jax.nn.one_hot(batch["msa"].astype(jnp.int32), 23)
    extra_one_hot = extra_mask[:, :, None] * jax.nn.one_hot(batch["extra_msa"], 23)
    agreement = jnp.einsum("mrc,nrc->nm", extra_one_hot, weights * msa_one_hot)
    assignment = jax.nn.softmax(1e3 * agreement, axis=0)
    assignment = assignment * jnp.einsum("mr,nr->mn", msa_mask, extra_mask)
    count = jnp.sum(assignment, axis=-1) + 1.0  # the cluster centre itself
    msa_sum = jnp.einsum("nm,mrc->nrc", assignment, extra_one_hot) + msa_one_hot
    del_sum = jnp.einsum("nm,mc->nc", assignment, extra_mask * batch["extra_deletion_matrix"])
    del_sum = del_sum + batch["deletion_matrix"]
    return msa_sum / count[:, None, None], del_sum / count[:, None]


def _deletion_value(deletions: jax.Array) -> jax.Array:
    return (jnp.arctan(deletions / 3.0) * (2.0 / jnp.pi))[..., None]


def create_msa_feat(batch: dict) -> jax.Array:
    """`msa_feat [N_clust, N_res, 49]`: one-hot (23), has deletion, deletion value, cluster profile (23),
    cluster deletion mean."""
    deletions = batch["deletion_matrix"]
    return jnp.concatenate(
        [
            jax.nn.one_hot(batch["msa"].astype(jnp.int32), 23),
            jnp.clip(deletions, 0.0, 1.0)[..., None],
            _deletion_value(deletions),
            batch["cluster_profile"],
            _deletion_value(batch["cluster_deletion_mean"]),
        ],
        axis=-1,
    )


def create_extra_msa_feature(batch: dict, num_extra_msa: int) -> tuple[jax.Array, jax.Array]:
    """The first `num_extra_msa` extra rows: features `[N_extra, N_res, 25]` and mask `[N_extra, N_res]`."""
    deletions = batch["extra_deletion_matrix"][:num_extra_msa]
    features = jnp.concatenate(
        [
            jax.nn.one_hot(batch["extra_msa"][:num_extra_msa], 23),
            jnp.clip(deletions, 0.0, 1.0)[..., None],
            _deletion_value(deletions),
        ],
        axis=-1,
    )
    return features, batch["extra_msa_mask"][:num_extra_msa]


def process_msa(key: jax.Array, batch: dict, config) -> tuple[dict, dict]:
    """One pass's MSA processing, with AlphaFold's key use: `key` -> (unused, sample key, mask key).

    config: `embeddings_and_evoformer`. Returns the batch with the sampled/corrupted MSA, `msa_feat`,
    `extra_msa_feat`, `extra_msa_mask` (truncated to `num_extra_msa`), and a dict of intermediates.
    """
    batch = dict(batch, msa_profile=make_msa_profile(batch))
    _, sample_key, mask_key = jax.random.split(key, 3)
    batch, order = sample_msa(sample_key, batch, config.num_msa)
    sampled_msa_mask = batch["msa_mask"]
    batch = make_masked_msa(batch, mask_key, config.masked_msa)
    batch["cluster_profile"], batch["cluster_deletion_mean"] = nearest_neighbor_clusters(batch)
    batch["msa_feat"] = create_msa_feat(batch)
    batch["extra_msa_feat"], batch["extra_msa_mask"] = create_extra_msa_feature(batch, config.num_extra_msa)
    return batch, {
        "sample_key": sample_key,
        "mask_key": mask_key,
        "index_order": order["index_order"],
        "logits": order["logits"],
        "sampled_msa_mask": sampled_msa_mask,
    }
