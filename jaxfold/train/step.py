"""The jit-compiled training step.

`make_train_step(config, loss_fn, mesh=None)` returns `step(state, batch) -> (new_state, metrics)`:

- `batch`: the *global* batch, every array `[B, R, ...]` (batch, then the model's recycling axis), e.g.
  from `stack_examples([...])`. With a mesh, `B` is split over the `data` axis (`shard_batch` places it);
  each example runs through `AlphaFold(config.model, is_training=True)` (vmapped over the local batch)
  with `model.global_config.use_remat` / `.dtype` (bf16 activations) from the config, and the trunk is
  split over `dap` (dynamic axial parallelism) when the mesh has `dap > 1`.
- `loss_fn(outputs, example) -> (loss, {name: scalar})` per example. `example` is the example's features
  at the final recycling iteration (the slice the last pass saw) merged with its ground truth (keys
  without the recycling axis, see `split_example`; only the sliced keys go to the model). Adapt
  `jaxfold.losses.total_loss(outputs, batch, config)` with `loss_fn_from_config`.
- The loss is the mean over the global batch; its gradient is therefore the mean of per-example
  gradients (an all-reduce over `data`, inserted by `shard_map`'s autodiff).
- Non-finite loss or gradients: the update is skipped (params, opt_state, EMA unchanged), `step` and
  `num_skipped` still advance, and `metrics['skipped']` is 1.
- Recycling: when `training.sample_recycling` and the batch has no `num_iter_recycling`, one number of
  recycling iterations in `[0, model.num_recycle]` is drawn per step (the same for the whole batch).
- The state is donated: do not reuse the `state` passed in.

Metrics: `loss`, each loss term (batch mean), `grad_norm` (before clipping), `learning_rate`, `skipped`,
`num_skipped`, `num_recycling`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxfold.parallel.dap import Dap
from jaxfold.parallel.mesh import dap_for_mesh
from jaxfold.train.optimizer import alphafold_schedule, make_optimizer, training_section
from jaxfold.train.state import TrainState, ema_update

__all__ = [
    "make_train_step",
    "loss_fn_from_config",
    "stack_examples",
    "shard_batch",
    "replicate",
    "split_example",
    "device_batch",
    "UNSLICED_KEYS",
    "ApplyFn",
    "LossFn",
]

# (params, example [R, ...], dropout key, dap) -> outputs
ApplyFn = Callable[[Any, Mapping[str, jax.Array], jax.Array, Dap], Any]
# (outputs, example at the final recycling iteration) -> (scalar, {name: scalar})
LossFn = Callable[[Any, Mapping[str, jax.Array]], Any]


def alphafold_apply_fn(config) -> ApplyFn:
    """The default model: `AlphaFold(config.model, is_training=True, dap=dap)`."""
    from jaxfold.model.alphafold import AlphaFold  # noqa: PLC0415

    def apply(params, example, key, dap):
        model = AlphaFold(config.model, is_training=True, dap=dap)
        return model.apply({"params": params}, example, rngs={"dropout": key})

    return apply


def loss_fn_from_config(total_loss: Callable, config) -> LossFn:
    """Adapt `total_loss(outputs, batch, config) -> (scalar, terms)` to this module's `loss_fn`."""

    def loss_fn(outputs, example):
        return total_loss(outputs, example, config)

    return loss_fn


def stack_examples(examples) -> dict[str, np.ndarray]:
    """List of per-example feature dicts (`[R, ...]` arrays) -> one batch dict of `[B, R, ...]` arrays."""
    keys = examples[0].keys()
    return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in keys}


def replicate(tree: Any, mesh) -> Any:
    """Place `tree` replicated on every device of `mesh` (identity without a mesh)."""
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch: Mapping[str, Any], mesh) -> dict[str, jax.Array]:
    """Place a batch `[B, ...]` split over the mesh's `data` axis (replicated over `dap`).

    Single process: `batch` is the global batch. Multi-process: each process passes its own slice of the
    global batch (`B / process_count` examples), assembled with `make_array_from_process_local_data`.
    """
    if mesh is None:
        return {k: jnp.asarray(v) for k, v in batch.items()}
    sharding = NamedSharding(mesh, P("data"))
    if jax.process_count() > 1:
        return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}
    return {k: jax.device_put(np.asarray(v), sharding) for k, v in batch.items()}


# Keys of a training sample that never carry the recycling axis (ground truth and bookkeeping from
# `jaxfold.data.dataset.TrainingDataset.sample`); other keys have it iff their leading size is the number
# of recycling slices (`aatype.shape[0]`).
UNSLICED_KEYS = frozenset(
    {
        "all_atom_positions",
        "all_atom_mask",
        "resolution",
        "crop_start",
        "num_res",
        "chain_index",
        "sample_index",
        "sample_position",
    }
)


def device_batch(batch: Mapping[str, Any]) -> dict[str, Any]:
    """A dataset sample or loader batch without what stays on the host: the loader's bookkeeping
    (`sample_index`, `sample_position`) and non-numeric values (e.g. a release date)."""
    return {
        k: v
        for k, v in batch.items()
        if k not in ("sample_index", "sample_position") and np.asarray(v).dtype.kind in "biuf"
    }


def split_example(example: Mapping[str, Any]) -> tuple[dict, dict]:
    """One example -> (model features with the leading recycling axis, everything else: ground truth)."""
    num_slices = example["aatype"].shape[0]
    features, truth = {}, {}
    for k, v in example.items():
        sliced = k not in UNSLICED_KEYS and getattr(v, "ndim", 0) >= 1 and v.shape[0] == num_slices
        (features if sliced else truth)[k] = v
    return features, truth


def _as_loss_and_terms(result):
    if isinstance(result, tuple):
        loss, terms = result
    else:
        loss, terms = result, {}
    return jnp.asarray(loss, jnp.float32), {k: jnp.asarray(v, jnp.float32) for k, v in dict(terms).items()}


def _tree_all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def make_train_step(
    config,
    loss_fn: LossFn,
    mesh=None,
    *,
    apply_fn: ApplyFn | None = None,
    tx: optax.GradientTransformation | None = None,
    donate: bool = True,
):
    """Build the compiled training step (see the module docstring).

    config: a training config (`jaxfold.config.model_config("initial_training", ...)`: `config.model`,
      `config.training`).
    loss_fn: per-example loss, `(outputs, example) -> (scalar, terms)`.
    mesh: optional ('dap', 'data') mesh from `jaxfold.parallel.mesh.make_mesh`.
    apply_fn: the model, `(params, example, dropout_key, dap) -> outputs`; default AlphaFold (tests and
      experiments may inject a smaller model).
    tx: the optimizer; default `make_optimizer(config)` (the state's `opt_state` must match it).
    """
    t = training_section(config)
    tx = make_optimizer(config) if tx is None else tx
    schedule = alphafold_schedule(config)
    ema_decay = float(t["ema_decay"])
    apply_fn = alphafold_apply_fn(config) if apply_fn is None else apply_fn
    model_cfg = config["model"] if "model" in config else None
    max_recycle = int(model_cfg["num_recycle"]) if model_cfg is not None else 0
    resample = bool(model_cfg["resample_msa_in_recycling"]) if model_cfg is not None else False
    sample_recycling = bool(t.get("sample_recycling", False)) and max_recycle > 0
    dap = dap_for_mesh(mesh)
    data_axis = mesh is not None and "data" in mesh.axis_names

    def per_example(params, example, key):
        features, truth = split_example(example)
        outputs = apply_fn(params, features, key, dap)
        if "num_iter_recycling" in features:
            idx = jnp.minimum(features["num_iter_recycling"][0], max_recycle) if resample else 0
        else:
            idx = max_recycle if resample else 0
        final = jax.tree_util.tree_map(lambda x: jax.lax.dynamic_index_in_dim(x, idx, 0, False), features)
        return _as_loss_and_terms(loss_fn(outputs, {**final, **truth}))

    def batch_loss(params, batch, keys, global_batch_size):
        losses, terms = jax.vmap(per_example, in_axes=(None, 0, 0))(params, batch, keys)
        total = jnp.sum(losses)
        terms = {k: jnp.sum(v) for k, v in terms.items()}
        if data_axis:
            total, terms = jax.lax.psum((total, terms), "data")
        return total / global_batch_size, {k: v / global_batch_size for k, v in terms.items()}

    def step(state: TrainState, batch: Mapping[str, jax.Array]):
        batch = dict(batch)
        global_b = batch["aatype"].shape[0]
        rng, step_key = jax.random.split(state.rng)
        recycle_key, dropout_key = jax.random.split(step_key)
        if sample_recycling and "num_iter_recycling" not in batch:
            num_r = batch["aatype"].shape[1]
            n = jax.random.randint(recycle_key, (), 0, max_recycle + 1, jnp.int32)
            batch["num_iter_recycling"] = jnp.full((global_b, num_r), n, jnp.int32)
        keys = jax.random.split(dropout_key, global_b)

        loss_of = lambda p, b, k: batch_loss(p, b, k, global_b)  # noqa: E731
        if mesh is not None:
            spec = P("data") if data_axis else P()
            loss_of = jax.shard_map(loss_of, mesh=mesh, in_specs=(P(), spec, spec), out_specs=(P(), P()))
        (loss, terms), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params, batch, keys)

        finite = jnp.isfinite(loss) & _tree_all_finite(grads)
        grad_norm = optax.tree.norm(grads) if hasattr(optax, "tree") else optax.global_norm(grads)
        updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        new_ema = ema_update(state.ema_params, new_params, ema_decay)
        keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        new_state = TrainState(
            step=state.step + 1,
            params=keep(new_params, state.params),
            opt_state=keep(new_opt_state, state.opt_state),
            ema_params=keep(new_ema, state.ema_params),
            rng=rng,
            num_skipped=state.num_skipped + (~finite).astype(jnp.int32),
        )
        metrics = {
            "loss": loss,
            **terms,
            "grad_norm": grad_norm,
            "learning_rate": schedule(state.step - state.num_skipped),
            "skipped": (~finite).astype(jnp.int32),
            "num_skipped": new_state.num_skipped,
            "num_recycling": (
                batch["num_iter_recycling"][0, 0]
                if "num_iter_recycling" in batch
                else jnp.asarray(max_recycle, jnp.int32)
            ),
        }
        return new_state, metrics

    return jax.jit(step, donate_argnums=(0,) if donate else ())
