"""Parameter initialisation for a config: shapes only depend on the config, not on the protein."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxfold.common import residue_constants as rc
from jaxfold.model.alphafold import AlphaFoldIteration


def dummy_features(
    config, num_res: int = 4, num_seq: int = 2, num_extra: int = 2, num_templates: int = 1, num_iterations: int = 1
) -> dict:
    """A minimal, valid feature dict (leading recycling axis) in DeepMind's processed layout."""
    del config  # every width comes from the config inside the model; features have fixed widths
    r = num_iterations
    aatype = np.zeros((r, num_res), np.int32)
    ones = lambda *s: np.ones((r,) + s, np.float32)  # noqa: E731
    zeros = lambda *s: np.zeros((r,) + s, np.float32)  # noqa: E731
    atom14_exists = rc.restype_atom14_mask[aatype].astype(np.float32)
    atom37_exists = rc.restype_atom37_mask[aatype].astype(np.float32)
    return {
        "aatype": aatype,
        "seq_mask": ones(num_res),
        "residue_index": np.tile(np.arange(num_res), (r, 1)),
        "target_feat": zeros(num_res, 22),
        "msa_feat": zeros(num_seq, num_res, 49),
        "msa_mask": ones(num_seq, num_res),
        "extra_msa": np.zeros((r, num_extra, num_res), np.int32),
        "extra_has_deletion": zeros(num_extra, num_res),
        "extra_deletion_value": zeros(num_extra, num_res),
        "extra_msa_mask": ones(num_extra, num_res),
        "template_aatype": np.zeros((r, num_templates, num_res), np.int32),
        "template_all_atom_positions": zeros(num_templates, num_res, 37, 3),
        "template_all_atom_masks": zeros(num_templates, num_res, 37),
        "template_mask": ones(num_templates),
        "template_pseudo_beta": zeros(num_templates, num_res, 3),
        "template_pseudo_beta_mask": zeros(num_templates, num_res),
        "atom14_atom_exists": atom14_exists,
        "atom37_atom_exists": atom37_exists,
        "residx_atom14_to_atom37": rc.restype_atom14_to_atom37[aatype].astype(np.int32),
        "residx_atom37_to_atom14": rc.restype_atom37_to_atom14[aatype].astype(np.int32),
    }


def dummy_multimer_features(num_res: int = 4, num_seq: int = 2, num_extra: int = 2, num_templates: int = 1) -> dict:
    """A minimal multimer batch (no recycling axis) holding one pass's *sampled* MSA inputs (`msa_feat`,
    `extra_msa_feat` and their masks), which `AlphaFoldIterationMultimer` accepts with `key=None`."""
    zeros = lambda *s: np.zeros(s, np.float32)  # noqa: E731
    ones = lambda *s: np.ones(s, np.float32)  # noqa: E731
    return {
        "aatype": np.zeros((num_res,), np.int32),
        "residue_index": np.arange(num_res, dtype=np.int32),
        "seq_mask": ones(num_res),
        "asym_id": ones(num_res),
        "entity_id": ones(num_res),
        "sym_id": ones(num_res),
        "msa_feat": zeros(num_seq, num_res, 49),
        "msa_mask": ones(num_seq, num_res),
        "extra_msa_feat": zeros(num_extra, num_res, 25),
        "extra_msa_mask": ones(num_extra, num_res),
        "template_aatype": np.zeros((num_templates, num_res), np.int32),
        "template_all_atom_positions": zeros(num_templates, num_res, 37, 3),
        "template_all_atom_mask": zeros(num_templates, num_res, 37),
    }


def init_params(config, rng: jax.Array | None = None) -> dict:
    """Fresh parameters (AlphaFold's initialisers) for `config`, rooted below `alphafold/`.

    Initialises one `AlphaFoldIteration` (the only parameterised child of `AlphaFold`) rather than the
    recycling wrapper, which would trace the iteration twice.
    """
    rng = jax.random.PRNGKey(0) if rng is None else rng
    if config.model.global_config.multimer_mode:
        return _init_multimer_params(config, rng)
    batch = {k: jnp.asarray(v[0]) for k, v in dummy_features(config).items()}
    emb = config.model.embeddings_and_evoformer
    num_res = batch["aatype"].shape[0]
    batch["prev_pos"] = jnp.zeros((num_res, rc.atom_type_num, 3))
    batch["prev_msa_first_row"] = jnp.zeros((num_res, emb.msa_channel))
    batch["prev_pair"] = jnp.zeros((num_res, num_res, emb.pair_channel))
    params = AlphaFoldIteration(config.model).init(rng, batch)["params"]
    return {"alphafold_iteration": params}


def _init_multimer_params(config, rng: jax.Array) -> dict:
    from jaxfold.model.alphafold_multimer import AlphaFoldIterationMultimer  # noqa: PLC0415

    batch = {k: jnp.asarray(v) for k, v in dummy_multimer_features().items()}
    emb = config.model.embeddings_and_evoformer
    num_res = batch["aatype"].shape[0]
    batch["prev_pos"] = jnp.zeros((num_res, rc.atom_type_num, 3))
    batch["prev_msa_first_row"] = jnp.zeros((num_res, emb.msa_channel))
    batch["prev_pair"] = jnp.zeros((num_res, num_res, emb.pair_channel))
    params = AlphaFoldIterationMultimer(config.model).init(rng, batch, None)["params"]
    return {"alphafold_iteration": params}
