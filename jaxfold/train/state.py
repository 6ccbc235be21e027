"""`TrainState`: everything a training run needs to continue exactly, as one pytree.

Fields (all JAX arrays / pytrees of arrays, so the whole state can be `jit`-donated, sharded and
checkpointed with Orbax):

- `step`: int32 scalar, optimizer steps taken so far (skipped non-finite steps included).
- `params`: the model parameters (tree rooted below `alphafold/`, as `init_params` returns).
- `opt_state`: the Optax state of `make_optimizer(config)`.
- `ema_params`: exponential moving average of `params` (what evaluation and release use).
- `rng`: uint32[2] PRNG key; each step splits it (dropout, recycling-count sampling).
- `num_skipped`: int32 scalar, steps whose loss or gradients were not finite (update skipped).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

__all__ = ["TrainState", "ema_update"]


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    rng: jax.Array
    num_skipped: jax.Array

    @classmethod
    def create(cls, params: Any, tx: optax.GradientTransformation, rng: jax.Array | int = 0) -> TrainState:
        """A fresh state at step 0: `ema_params` start equal to `params`; `rng` a key or an int seed."""
        if isinstance(rng, int):
            rng = jax.random.PRNGKey(rng)
        params = jax.tree_util.tree_map(jnp.asarray, params)
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            ema_params=jax.tree_util.tree_map(jnp.array, params),  # a copy: donation-safe
            rng=jnp.asarray(rng, jnp.uint32),
            num_skipped=jnp.zeros((), jnp.int32),
        )


def ema_update(ema: Any, params: Any, decay: float) -> Any:
    """`ema <- decay * ema + (1 - decay) * params`, leaf by leaf (in the EMA's dtype)."""
    return jax.tree_util.tree_map(
        lambda e, p: (decay * e + (1.0 - decay) * p.astype(e.dtype)).astype(e.dtype), ema, params
    )
