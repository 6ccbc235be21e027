"""One process of a (multi-process) training run with a stand-in model, for tests/test_multiprocess_train.py.

    python tests/multiprocess_train_run.py OUT STEPS NUM_PROCESSES PROCESS_ID PORT DATA_DIR

Runs `jaxfold.train.loop.run_training` on a `2x4` mesh over 8 CPU devices (8 / NUM_PROCESSES per
process, joined through `jax.distributed` on localhost) on real chains of ../shared/data, with a stand-in
model (a small MLP from the MSA features to Cα coordinates) so that XLA compiles in seconds. Everything
else is the real loop: per-process loading, the data-parallel all-reduce, Orbax checkpoints, resume,
the metrics log.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = {
    "training.batch_size": 4,
    "training.num_workers": 0,
    "training.checkpoint_every": 2,
    "training.log_every": 1,
    "training.warmup_steps": 0,
    "training.learning_rate": 1e-2,
    "training.ema_decay": 0.9,
    "data.train.crop_size": 16,
    "data.train.max_msa_clusters": 8,
    "data.train.max_extra_msa": 4,
    "data.common.use_templates": False,
}


def stand_in_init(cfg, key):
    k1, k2 = jax.random.split(key)
    return {
        "mlp": {
            "w1": 0.3 * jax.random.normal(k1, (49, 16)),
            "b1": jax.numpy.zeros(16),
            "w2": 0.3 * jax.random.normal(k2, (16, 3)),
        }
    }


def stand_in_apply(params, example, key, dap):
    import jax.numpy as jnp  # noqa: PLC0415

    del dap
    p = params["mlp"]
    h = jnp.tanh(example["msa_feat"][0].mean(0) @ p["w1"] + p["b1"])  # [N, 16]
    h = jnp.where(jax.random.bernoulli(key, 0.9, h.shape), h / 0.9, 0.0)  # dropout: keys matter
    return {"ca": 10.0 * (h @ p["w2"])}


def stand_in_loss(outputs, example):
    """Masked Cα MSE against the crop's ground truth, plus an identifier of the example (its chain, crop
    and clamping draw) so that runs can be checked to have seen the same examples in each batch."""
    import jax.numpy as jnp  # noqa: PLC0415

    ca_true = example["all_atom_positions"][:, 1]
    mask = example["all_atom_mask"][:, 1]
    centre = lambda x: x - jnp.sum(x * mask[:, None], 0) / jnp.maximum(jnp.sum(mask), 1.0)  # noqa: E731
    err = jnp.sum(mask * jnp.sum((centre(outputs["ca"]) - centre(ca_true)) ** 2, -1)) / jnp.maximum(jnp.sum(mask), 1.0)
    ident = 1000.0 * example["chain_index"] + example["crop_start"] + 0.5 * example["use_clamped_fape"]
    return err / 100.0, {"ca_mse": err, "example_id": ident.astype(jnp.float32)}


def main(out: str, steps: int, num_processes: int, process_id: int, port: int, data_dir: str) -> None:
    jax.config.update("jax_num_cpu_devices", 8 // num_processes)
    if num_processes > 1:
        jax.distributed.initialize(f"localhost:{port}", num_processes=num_processes, process_id=process_id)
    from jaxfold.config import model_config  # noqa: PLC0415
    from jaxfold.parallel.mesh import make_mesh  # noqa: PLC0415
    from jaxfold.train.loop import run_training  # noqa: PLC0415

    cfg = model_config("tiny", num_recycle=0, **SETTINGS, **{"training.num_steps": steps})
    chains = Path(out).parent / "chains.txt"
    data = Path(data_dir)
    run_training(
        cfg,
        make_mesh("2x4"),
        data_dir=data / "structures" / "mmcif",
        alignment_dir=data / "msas",
        output_dir=out,
        chain_list=chains,
        init_fn=stand_in_init,
        apply_fn=stand_in_apply,
        loss_fn=stand_in_loss,
        progress=False,
        log=lambda m: print(f"[{process_id}] {m}", file=sys.stderr, flush=True),
    )
    print(f"[{process_id}] finished", file=sys.stderr, flush=True)


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], int(a[1]), int(a[2]), int(a[3]), int(a[4]), a[5])
