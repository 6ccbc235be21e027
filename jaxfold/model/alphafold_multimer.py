"""AlphaFold-Multimer (v2.3) in Flax: DeepMind's `modules_multimer.AlphaFold`, numerically and key for key.

Scopes (the official parameter files' names): `alphafold/alphafold_iteration/{evoformer, structure_module,
distogram_head, masked_msa_head, predicted_lddt_head, experimentally_resolved_head,
predicted_aligned_error_head}`. The Evoformer and extra-MSA stacks, their kernels, chunking and DAP are the
monomer ones (`evoformer.trunk_stack`; the multimer order and layouts are config flags), and so are the heads,
the recycling inputs and outputs and the recycling loop (`alphafold.py`); what really differs has its own
module: the in-model MSA sampling (`msa_sampling.py`), the chain-relative encoding (`relative_encoding.py`), the
template embedders (`template_multimer.py`) and the structure module (`structure_module_multimer.py`).

Input batch: the multimer features as DeepMind's model consumes them (`features.npz` of
shared/reference_multimer: no recycling axis): `aatype`, `residue_index`, `seq_mask`, `asym_id`, `entity_id`,
`sym_id`, the whole MSA `msa`, `deletion_matrix`, `msa_mask`, `bert_mask`, `cluster_bias_mask`, and
`template_aatype`, `template_all_atom_positions`, `template_all_atom_mask`.

Keys: `AlphaFoldMultimer(...)(batch, key)` takes the key AlphaFold's `SafeKey(hk.next_rng_key())` holds; under
`hk.transform(...).apply(params, rng, ...)` that is `jax.random.split(rng)[1]` (`haiku_rng_key`). Each
recycling pass takes `split(key)[1]` and hands on `split(key)[0]`; the last pass takes the carried key as is.
Inside a pass the embedding gets `split(pass_key)[1]` (AlphaFold's one-member ensemble scan), which
`msa_sampling.process_msa` splits into the sample and mask keys.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfold.common import residue_constants
from jaxfold.model import embedders
from jaxfold.model.alphafold import apply_heads, initial_recycling_inputs, recycle, recycling_outputs
from jaxfold.model.evoformer import trunk_stack
from jaxfold.model.msa_sampling import deepmind_keys, process_msa
from jaxfold.model.primitives import Linear
from jaxfold.model.relative_encoding import SCOPE as RELATIVE_ENCODING_SCOPE
from jaxfold.model.relative_encoding import RelativeEncoding
from jaxfold.model.structure_module_multimer import StructureModuleMultimer
from jaxfold.model.template_multimer import TemplateEmbedding, template_embedding_1d
from jaxfold.parallel.dap import NO_DAP, Dap, dropout_rng_refs, vary_like

# The whole-MSA inputs that the in-model sampling consumes (a pass fed recorded sampled inputs needs none).
MSA_FEATURES = ("msa", "deletion_matrix", "msa_mask", "bert_mask", "cluster_bias_mask")


def haiku_rng_key(rng: jax.Array) -> jax.Array:
    """The key of Haiku's first `hk.next_rng_key()` under `apply(params, rng, ...)`: `split(rng)[1]`."""
    with deepmind_keys():
        return jax.random.split(rng)[1]


def split_pass_key(key: jax.Array, resample_msa_in_recycling: bool = True) -> tuple[jax.Array, jax.Array]:
    """One recycling step of AlphaFold's key schedule: `key -> (key for later passes, this pass's key)`;
    without MSA resampling every pass gets the same key (`SafeKey.duplicate`)."""
    if not resample_msa_in_recycling:
        return key, key
    next_key, pass_key = jax.random.split(key)
    return next_key, pass_key


class EmbeddingsAndEvoformerMultimer(nn.Module):
    """Multimer trunk (Haiku name `evoformer`): in-model MSA sampling, input/recycling/relative/template
    embeddings, extra-MSA and Evoformer stacks.

    `__call__(batch, key, capture)`: with a `key`, the MSA is sampled from the whole MSA in `batch`; with
    `key=None` the batch must already hold one pass's sampled inputs (`msa_feat`, the clusters' `msa_mask`,
    `extra_msa_feat`, `extra_msa_mask`), e.g. DeepMind's recorded batches. Returns `single [N, c_s]`,
    `pair [N, N, c_z]`, `msa [num_msa, N, c_m]`, `msa_first_row [N, c_m]`.
    """

    config: object  # model.embeddings_and_evoformer
    global_config: object
    is_training: bool = False
    dap: Dap = NO_DAP

    @nn.compact
    def __call__(self, batch: dict, key: jax.Array | None = None, capture: bool = False) -> dict:
        c, gc = self.config, self.global_config
        dtype = jnp.dtype(gc.dtype)

        def sow(name, value):
            if capture:
                self.sow("intermediates", name, value)

        if key is not None:
            with deepmind_keys():
                batch, sampling = process_msa(key, batch, c)
            for name in ("sample_key", "mask_key", "index_order", "logits"):
                sow(f"sample_msa/{name}", sampling[name])
            for name in (
                "msa",
                "true_msa",
                "bert_mask",
                "cluster_profile",
                "cluster_deletion_mean",
                "msa_feat",
                "extra_msa_feat",
                "extra_msa_mask",
                "msa_profile",
            ):
                sow(f"batch/{name}", batch[name])
        aatype = batch["aatype"]
        target_feat = jax.nn.one_hot(aatype, 21)
        msa, pair = embedders.input_embedding({"target_feat": target_feat, "msa_feat": batch["msa_feat"]}, c)
        seq_mask = batch["seq_mask"]
        mask_2d = (seq_mask[:, None] * seq_mask[None, :]).astype(dtype)
        msa, pair = embedders.recycling_embedding(batch, c, msa, pair, gc.kernels)
        if c.max_relative_idx:
            relative = RelativeEncoding(c, gc.dtype, name=RELATIVE_ENCODING_SCOPE)(
                batch["residue_index"], batch["asym_id"], batch["entity_id"], batch["sym_id"]
            )
            sow("relative_encoding/output", relative)
            pair = pair + relative
        msa, pair = msa.astype(dtype), pair.astype(dtype)

        if c.template.enabled:
            multichain_mask = batch["asym_id"][:, None] == batch["asym_id"][None, :]
            template_act = TemplateEmbedding(c.template, gc, self.is_training, self.dap, name="template_embedding")(
                pair, batch, mask_2d, multichain_mask
            )
            sow("template_embedding/output", template_act)
            pair = pair + template_act

        extra_msa = Linear(c.extra_msa_channel, name="extra_msa_activations")(batch["extra_msa_feat"]).astype(dtype)
        vary_refs = dropout_rng_refs(self, self.is_training, gc)
        sow("extra_msa_stack/input", (extra_msa, pair))
        extra_msa, pair = trunk_stack(
            self, extra_msa, pair, batch["extra_msa_mask"], mask_2d, vary_refs, is_extra_msa=True
        )
        sow("extra_msa_stack/output", pair)

        num_msa_sequences = msa.shape[0]
        msa_mask = batch["msa_mask"].astype(dtype)
        if c.template.enabled:
            template_rows, template_mask = template_embedding_1d(batch, c.msa_channel, dtype)
            sow("template_single", (template_rows, template_mask))
            msa = jnp.concatenate([msa, template_rows.astype(dtype)], axis=0)
            msa_mask = jnp.concatenate([msa_mask, template_mask.astype(dtype)], axis=0)
        sow("evoformer_stack/input", (msa, pair, msa_mask))
        msa, pair = trunk_stack(self, msa, pair, msa_mask, mask_2d, vary_refs, is_extra_msa=False)
        sow("evoformer_stack/output", msa)

        msa, pair = msa.astype(jnp.float32), pair.astype(jnp.float32)
        single = Linear(c.seq_channel, name="single_activations")(msa[0])
        return {"single": single, "pair": pair, "msa": msa[:num_msa_sequences], "msa_first_row": msa[0]}


class AlphaFoldIterationMultimer(nn.Module):
    """One multimer pass (Haiku name `alphafold_iteration`): trunk -> structure module -> heads.

    `__call__(batch, key, capture)`: batch as `EmbeddingsAndEvoformerMultimer` plus `prev_pos`,
    `prev_msa_first_row`, `prev_pair`; `key` is the pass key (None: recorded sampled inputs in the batch).
    Heads with zero weight are not built, as in AlphaFold; the PAE head also returns `asym_id` (for ipTM).
    """

    config: object  # cfg.model
    is_training: bool = False
    dap: Dap = NO_DAP

    @nn.compact
    def __call__(self, batch: dict, key: jax.Array | None = None, capture: bool = False) -> dict:
        c = self.config
        gc = c.global_config
        if c.get("num_ensemble_eval", 1) != 1 or (self.is_training and c.get("num_ensemble_train", 1) != 1):
            raise ValueError(
                "AlphaFold-Multimer ensembling (num_ensemble_eval/num_ensemble_train > 1) is not "
                "supported; every shipped multimer config uses 1"
            )
        with deepmind_keys():
            embedding_key = None if key is None else jax.random.split(key)[1]  # the one-member ensemble scan
        representations = EmbeddingsAndEvoformerMultimer(
            c.embeddings_and_evoformer, gc, self.is_training, self.dap, name="evoformer"
        )(batch, embedding_key, capture)
        structure = StructureModuleMultimer(c.heads.structure_module, gc, self.is_training, name="structure_module")(
            representations, batch
        )
        representations = dict(representations, structure_module=structure.pop("act"))
        ret = {"representations": representations, "structure_module": structure}
        ret.update(apply_heads(c, representations, batch, self.is_training))
        return ret


def ca_distance_change(prev_pos: jax.Array, next_pos: jax.Array, seq_mask: jax.Array) -> jax.Array:
    """RMS change of all C-alpha/C-alpha distances between two passes (AlphaFold's early-stop criterion,
    after AF2Complex): `sqrt(masked_mean((d_prev - d_next)^2) + 1e-8)`."""
    ca = residue_constants.atom_order["CA"]

    def distances(points):
        return jnp.sqrt(jnp.sum((points[:, None] - points[None, :]) ** 2, axis=-1))

    sq_diff = jnp.square(distances(prev_pos[:, ca, :]) - distances(next_pos[:, ca, :]))
    mask = seq_mask[:, None] * seq_mask[None, :]
    sq_diff = jnp.sum(mask * sq_diff) / (jnp.sum(mask) + 1e-10)
    return jnp.sqrt(sq_diff + 1e-8)


def continue_recycling(i, prev_pos, next_pos, seq_mask, num_iter, tolerance: float) -> jax.Array:
    """AlphaFold-Multimer's recycling condition before pass `i`: passes remain (`i < num_iter`) and either
    nothing has run yet or the C-alpha distances still moved by more than `tolerance` (RMS, Angstrom)."""
    diff = ca_distance_change(prev_pos, next_pos, seq_mask)
    return (i < num_iter) & ((i == 0) | (diff > tolerance))


def prepare_batch(features: dict) -> dict:
    """Features as DeepMind's multimer model consumes them -> the jnp batch (float64 ids become float32,
    int64 template aatypes int32, as JAX casts them on entry). Strings and unknown dtypes are dropped."""
    batch = {}
    for name, value in features.items():
        value = jnp.asarray(value) if getattr(value, "dtype", None) is not None and value.dtype.kind in "biuf" else None
        if value is not None:
            batch[name] = value
    for name in ("aatype", "residue_index", "template_aatype", "msa"):
        if name in batch:
            batch[name] = batch[name].astype(jnp.int32)
    return batch


class AlphaFoldMultimer(nn.Module):
    """AlphaFold-Multimer with recycling (Haiku name `alphafold`).

    `__call__(batch, key)`: the multimer batch (no recycling axis) and the model key (see the module doc).
    Returns the last pass's outputs plus `num_recycles` (the recycling passes run before it: up to
    `num_recycle`, fewer when the C-alpha distances change by at most `recycle_early_stop_tolerance`).
    `batch['num_iter_recycling']` (optional, int) lowers the maximum at run time.
    """

    config: object  # cfg.model
    is_training: bool = False
    dap: Dap = NO_DAP

    @nn.compact
    def __call__(self, batch: dict, key: jax.Array, capture: bool = False) -> dict:
        with deepmind_keys():
            return self._run(batch, key, capture)

    def _run(self, batch, key, capture):
        c = self.config
        iteration = AlphaFoldIterationMultimer(c, self.is_training, self.dap, name="alphafold_iteration")
        features = {k: v for k, v in batch.items() if k != "num_iter_recycling"}
        # The multimer trunk returns its pair in float32 whatever the activation dtype.
        prev = initial_recycling_inputs(c, features["aatype"].shape[0], pair_dtype=jnp.float32)
        num_recycles = jnp.asarray(0)
        if c.num_recycle:
            num_iter = c.num_recycle
            if "num_iter_recycling" in batch:
                num_iter = jnp.minimum(jnp.reshape(batch["num_iter_recycling"], (-1,))[0], c.num_recycle)

            def body(module, carry):
                i, _, prev, key = carry
                next_key, pass_key = split_pass_key(key, c.resample_msa_in_recycling)
                ret = module(dict(features, **prev), pass_key)
                return i + 1, prev, recycling_outputs(ret), next_key

            def cond(module, carry):
                del module
                i, prev, next_in, _ = carry
                return continue_recycling(
                    i,
                    prev["prev_pos"],
                    next_in["prev_pos"],
                    features["seq_mask"],
                    num_iter,
                    c.recycle_early_stop_tolerance,
                )

            prev = vary_like(prev, features)
            num_recycles, _, prev, key = recycle(self, iteration, cond, body, (jnp.asarray(0), prev, prev, key))
        ret = iteration(dict(features, **prev), key, capture)
        ret["num_recycles"] = num_recycles
        return ret
