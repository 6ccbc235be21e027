"""Optax optimizer and learning-rate schedule of AlphaFold2's training recipe (Suppl. 1.11.3).

`alphafold_schedule(config)`: linear warm-up from `lr / warmup_steps` to `lr` over the first
`warmup_steps` steps (`lr * (step + 1) / warmup_steps`, so step 0 already moves), then constant `lr`,
then `lr * decay_factor` from step `decay_steps` on (`decay_steps <= 0`: no decay).
`make_optimizer(config)`: `clip_by_global_norm(clip_global_norm)` then Adam(b1, b2, eps) with that
schedule. `config` is a training config (`config.training.*`) or its `training` table itself.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

__all__ = ["alphafold_schedule", "make_optimizer", "training_section"]


def training_section(config):
    """The `[training]` table of a training config (or the table itself)."""
    return config["training"] if "training" in config else config


def alphafold_schedule(config) -> optax.Schedule:
    t = training_section(config)
    lr = float(t["learning_rate"])
    warmup = int(t["warmup_steps"])
    decay_steps = int(t["decay_steps"])
    decay_factor = float(t["decay_factor"])

    def schedule(step):
        step = jnp.asarray(step)
        value = jnp.asarray(lr, jnp.float32)
        if warmup > 0:
            value = value * jnp.minimum((step + 1).astype(jnp.float32) / warmup, 1.0)
        if decay_steps > 0:
            value = jnp.where(step >= decay_steps, value * decay_factor, value)
        return value

    return schedule


def make_optimizer(config) -> optax.GradientTransformation:
    t = training_section(config)
    chain = []
    if float(t["clip_global_norm"]) > 0:
        chain.append(optax.clip_by_global_norm(float(t["clip_global_norm"])))
    chain.append(
        optax.adam(alphafold_schedule(t), b1=float(t["adam_b1"]), b2=float(t["adam_b2"]), eps=float(t["adam_eps"]))
    )
    return optax.chain(*chain)
