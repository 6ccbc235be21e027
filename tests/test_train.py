"""Training: presets, schedule, EMA, the compiled step (stand-in and real model), checkpoints, train.py.

Most step tests inject a small stand-in model (`apply_fn`) so they compile in seconds; one test runs the
real `AlphaFold(is_training=True)` (tiny preset, cut down) with a stand-in distogram loss.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfold.config import model_config
from jaxfold.model.init import dummy_features
from jaxfold.parallel.mesh import make_mesh
from jaxfold.train.checkpoint import CheckpointError, CheckpointManager
from jaxfold.train.optimizer import alphafold_schedule, make_optimizer
from jaxfold.train.state import TrainState, ema_update
from jaxfold.train.step import device_batch, make_train_step, replicate, shard_batch, stack_examples

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------
# Presets and schedule
# ---------------------------------------------------------------------------
def test_training_presets_follow_the_published_recipe():
    init = model_config("initial_training")
    fine = model_config("finetuning")
    for cfg in (init, fine):
        t = cfg.training
        assert (t.adam_b1, t.adam_b2, t.adam_eps) == (0.9, 0.999, 1e-6)
        assert (t.warmup_steps, t.decay_steps, t.decay_factor) == (1000, 50000, 0.95)
        assert (t.clip_global_norm, t.ema_decay, t.batch_size) == (0.1, 0.999, 128)
        assert cfg.model.global_config.use_remat and cfg.model.global_config.dtype == "bfloat16"
    assert (init.training.learning_rate, init.data.train.crop_size) == (1e-3, 256)
    assert (init.data.train.max_msa_clusters, init.data.train.max_extra_msa) == (128, 1024)
    assert init.data.train.use_clamped_fape_probability == 0.9  # Suppl. 1.11.5
    assert init.model.heads.structure_module.structural_violation_loss_weight == 0.0
    assert (fine.training.learning_rate, fine.data.train.crop_size) == (5e-4, 384)
    assert (fine.data.train.max_msa_clusters, fine.data.train.max_extra_msa) == (512, 5120)
    assert fine.model.heads.structure_module.structural_violation_loss_weight == 1.0
    assert fine.model.heads.predicted_aligned_error.weight == 0.1
    tiny = model_config("tiny", **{"training.batch_size": 4}, num_recycle=0)
    assert tiny.training.batch_size == 4 and tiny.model.num_recycle == 0
    with pytest.raises(ValueError, match="learning_rat"):
        model_config("tiny", **{"training.learning_rat": 1.0})


def test_schedule_warmup_constant_decay():
    sched = alphafold_schedule(model_config("initial_training"))
    expect = {
        0: 1e-6,
        499: 5e-4,
        998: 0.999e-3,
        999: 1e-3,
        1000: 1e-3,
        20000: 1e-3,
        49999: 1e-3,
        50000: 0.95e-3,
        100000: 0.95e-3,
    }
    for step, lr in expect.items():
        np.testing.assert_allclose(float(sched(step)), lr, rtol=1e-6, err_msg=f"step {step}")
    fine = alphafold_schedule(model_config("finetuning"))
    np.testing.assert_allclose(float(fine(5000)), 5e-4, rtol=1e-6)


def test_ema_math():
    ema = {"a": jnp.array([1.0, 2.0]), "b": jnp.array(4.0)}
    new = {"a": jnp.array([3.0, 2.0]), "b": jnp.array(0.0)}
    out = ema_update(ema, new, 0.9)
    np.testing.assert_allclose(out["a"], [1.2, 2.0], rtol=1e-6)
    np.testing.assert_allclose(out["b"], 3.6, rtol=1e-6)


# ---------------------------------------------------------------------------
# Stand-in model: the step's mechanics without AlphaFold's compile time
# ---------------------------------------------------------------------------
NUM_RES = 8


def toy_apply(params, example, key, dap):
    del dap
    x = example["msa_feat"][0].mean(0)  # [N, 49] (recycling slice 0)
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    keep = jax.random.bernoulli(key, 0.9, h.shape)  # dropout: per-example keys matter
    h = jnp.where(keep, h / 0.9, 0.0)
    return {"pos": h @ params["w2"]}


def toy_loss(outputs, example):
    err = jnp.mean((outputs["pos"] - example["target_pos"]) ** 2)
    return err, {"mse": err, "pos_norm": jnp.mean(outputs["pos"] ** 2)}


def toy_params(seed=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return {
        "w1": 0.3 * jax.random.normal(k1, (49, 16)),
        "b1": jnp.zeros(16),
        "w2": 0.3 * jax.random.normal(k2, (16, 3)),
    }


def example(seed, num_res=NUM_RES):
    rng = np.random.default_rng(seed)
    f = dummy_features(None, num_res=num_res, num_seq=3, num_extra=2, num_templates=1)
    f["msa_feat"] = rng.normal(size=f["msa_feat"].shape).astype(np.float32)
    f["target_pos"] = rng.normal(size=(1, num_res, 3)).astype(np.float32)
    return f


def toy_batch(batch_size=4, offset=0):
    return stack_examples([example(offset + i) for i in range(batch_size)])


@pytest.fixture(scope="module")
def toy_cfg():
    return model_config(
        "tiny", num_recycle=0, **{"training.learning_rate": 1e-2, "training.warmup_steps": 2, "training.ema_decay": 0.9}
    )


@pytest.fixture(scope="module")
def toy_step(toy_cfg):
    return make_train_step(toy_cfg, toy_loss, apply_fn=toy_apply)


def toy_state(cfg, seed=0):
    return TrainState.create(toy_params(seed), make_optimizer(cfg), rng=seed)


def host(tree):
    return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def assert_trees_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(host(a))
    lb, tb = jax.tree_util.tree_flatten(host(b))
    assert ta == tb
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


def test_step_reduces_loss_and_updates_ema(toy_cfg, toy_step):
    state = toy_state(toy_cfg)
    p0 = host(state.params)
    batch = shard_batch(toy_batch(), None)
    losses = []
    for i in range(8):
        prev = host(state)
        state, m = toy_step(state, batch)
        losses.append(float(m["loss"]))
        assert int(m["skipped"]) == 0 and int(state.step) == i + 1
        assert set(m) >= {"loss", "mse", "pos_norm", "grad_norm", "learning_rate", "num_skipped"}
        # EMA after the update: ema' = d * ema + (1 - d) * params'
        expect = jax.tree_util.tree_map(lambda e, p: 0.9 * e + 0.1 * p, prev.ema_params, host(state.params))
        for e, g in zip(jax.tree_util.tree_leaves(expect), jax.tree_util.tree_leaves(host(state.ema_params))):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-7)
    assert losses[-1] < 0.9 * losses[0], losses
    np.testing.assert_allclose(float(m["learning_rate"]), 1e-2, rtol=1e-6)
    assert not np.allclose(host(state.params)["w1"], p0["w1"])


def test_nan_loss_or_gradient_skips_the_update(toy_cfg, toy_step):
    state = toy_state(toy_cfg)
    state, _ = toy_step(state, shard_batch(toy_batch(), None))
    before = host(state)
    bad = toy_batch()
    bad["msa_feat"][1, 0, 0, 2, 5] = np.nan
    state, m = toy_step(state, shard_batch(bad, None))
    assert int(m["skipped"]) == 1 and int(m["num_skipped"]) == 1
    assert not np.isfinite(float(m["loss"]))
    after = host(state)
    assert int(after.step) == int(before.step) + 1 and int(after.num_skipped) == 1
    assert_trees_equal(
        (after.params, after.opt_state, after.ema_params), (before.params, before.opt_state, before.ema_params)
    )
    bad["msa_feat"][1, 0, 0, 2, 5] = np.inf
    state, m = toy_step(state, shard_batch(bad, None))
    assert int(m["skipped"]) == 1 and int(state.num_skipped) == 2
    state, m = toy_step(state, shard_batch(toy_batch(), None))  # training goes on
    assert int(m["skipped"]) == 0 and np.isfinite(float(m["loss"]))


def test_per_example_clamped_fape_flag_reaches_the_loss(toy_cfg):
    """The dataset's per-example `use_clamped_fape` scalar ([B] in the batch) reaches each example's
    loss: a loss clamping the error only where the flag is 1 sees the flags it was given."""

    def loss(outputs, ex):
        err = jnp.mean((outputs["pos"] - ex["target_pos"]) ** 2, -1)  # [N]
        use = ex["use_clamped_fape"]
        value = use * jnp.mean(jnp.minimum(err, 0.01)) + (1 - use) * jnp.mean(err)
        return value, {"use_clamped_fape": use, "clamped_part": use * jnp.mean(jnp.minimum(err, 0.01))}

    step = make_train_step(toy_cfg, loss, apply_fn=toy_apply, donate=False)
    batch = toy_batch(4)
    state = toy_state(toy_cfg)
    results = {}
    for flags in ((1, 0, 0, 0), (1, 1, 1, 1), (0, 0, 0, 0)):
        b = dict(batch, use_clamped_fape=np.asarray(flags, np.float32))
        _, m = step(state, shard_batch(b, None))
        results[flags] = {k: float(v) for k, v in m.items()}
        assert results[flags]["use_clamped_fape"] == pytest.approx(np.mean(flags))
    assert results[(0, 0, 0, 0)]["clamped_part"] == 0.0
    # every error is clamped to 0.01 in the all-clamped batch; the unclamped errors are larger
    assert results[(1, 1, 1, 1)]["loss"] == pytest.approx(0.01, rel=1e-5)
    assert results[(0, 0, 0, 0)]["loss"] > results[(1, 0, 0, 0)]["loss"] > results[(1, 1, 1, 1)]["loss"]


def test_data_parallel_step_equals_single_device(toy_cfg, toy_step):
    mesh = make_mesh("1x2", devices=jax.devices()[:2])
    dp_step = make_train_step(toy_cfg, toy_loss, mesh=mesh, apply_fn=toy_apply)
    single, sharded = toy_state(toy_cfg), replicate(toy_state(toy_cfg), mesh)
    for i in range(3):
        batch = toy_batch(offset=10 * i)
        single, m1 = toy_step(single, shard_batch(batch, None))
        sharded, m2 = dp_step(sharded, shard_batch(batch, mesh))
        for k in ("loss", "mse", "pos_norm", "grad_norm"):
            np.testing.assert_allclose(float(m2[k]), float(m1[k]), rtol=2e-6, err_msg=k)
    for a, b in zip(jax.tree_util.tree_leaves(host(sharded)), jax.tree_util.tree_leaves(host(single))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------
def test_checkpoint_restore_is_exact_and_resume_matches_uninterrupted(toy_cfg, toy_step, tmp_path):
    batches = [shard_batch(toy_batch(offset=10 * i), None) for i in range(4)]
    state = toy_state(toy_cfg)
    ref_losses = []
    for b in batches:
        state, m = toy_step(state, b)
        ref_losses.append(float(m["loss"]))
    final_ref = host(state)

    state = toy_state(toy_cfg)
    with CheckpointManager(tmp_path / "ckpt", keep=3) as ckpt:
        for b in batches[:2]:
            state, _ = toy_step(state, b)
        saved = host(state)
        ckpt.save(state, loader_state={"epoch": 1, "position": 17, "seed": 3})
        state, _ = toy_step(state, batches[2])  # donation right after an async save is safe
    del state

    ckpt = CheckpointManager(tmp_path / "ckpt", keep=3)
    assert ckpt.latest_step() == 2
    restored, loader_state = ckpt.restore(toy_state(toy_cfg, seed=5))
    ckpt.close()
    assert loader_state == {"epoch": 1, "position": 17, "seed": 3}
    assert isinstance(restored, TrainState)
    assert_trees_equal(restored, saved)
    losses = []
    for b in batches[2:]:
        restored, m = toy_step(restored, b)
        losses.append(float(m["loss"]))
    assert losses == ref_losses[2:]
    assert_trees_equal(restored, final_ref)


def test_keep_last_k(toy_cfg, tmp_path):
    state = toy_state(toy_cfg)
    with CheckpointManager(tmp_path, keep=2) as ckpt:
        for step in range(1, 6):
            ckpt.save(state.replace(step=jnp.asarray(step, jnp.int32)))
    ckpt = CheckpointManager(tmp_path, keep=2)
    assert ckpt.all_steps() == [4, 5]
    restored, _ = ckpt.restore(state)
    assert int(restored.step) == 5
    ckpt.close()


def test_missing_and_corrupt_checkpoints_raise_clear_errors(toy_cfg, tmp_path):
    state = toy_state(toy_cfg)
    ckpt = CheckpointManager(tmp_path / "run", keep=3)
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        ckpt.restore(state)
    ckpt.save(state.replace(step=jnp.asarray(3, jnp.int32)))
    ckpt.wait()
    with pytest.raises(CheckpointError, match=r"has no step 7 \(available: \[3\]\)"):
        ckpt.restore(state, step=7)
    step_dir = tmp_path / "run" / "3" / "state"
    files = [p for p in step_dir.rglob("*") if p.is_file()]
    assert files
    for p in files:  # corrupt every file of the state item
        p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"step 3 in '.*run' is corrupt"):
        ckpt.restore(state)
    assert (tmp_path / "run" / "3").is_dir()  # never deleted
    ckpt.close()


def test_resume_skips_a_corrupt_newest_checkpoint_with_a_warning(toy_cfg, tmp_path):
    """Steps 2 and 4 saved, step 4's files then truncated / overwritten: `restore_latest` warns naming
    step 4, moves it aside and resumes from step 2 exactly; with step 2 corrupted too, one clear
    CheckpointError names both."""
    state = toy_state(toy_cfg)
    with CheckpointManager(tmp_path / "ck", keep=5) as ckpt:
        for step in (2, 4):
            ckpt.save(state.replace(step=jnp.asarray(step, jnp.int32)), {"step": step})
    files = sorted(p for p in (tmp_path / "ck" / "4" / "state").rglob("*") if p.is_file())
    for p in files:  # truncated writes: every file cut to half (or emptied)
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    warnings = []
    with CheckpointManager(tmp_path / "ck", keep=5) as ckpt:
        restored, loader_state, step = ckpt.restore_latest(state, warn=warnings.append)
        assert step == 2 and int(restored.step) == 2 and loader_state == {"step": 2}
        assert_trees_equal(restored.params, state.params)
        assert len(warnings) == 1 and "ck/4" in warnings[0], warnings
        assert ckpt.all_steps() == [2] and (tmp_path / "ck" / "4.corrupt").is_dir()
        ckpt.save(restored.replace(step=jnp.asarray(4, jnp.int32)), {"step": 4})  # step 4 again: no clash
        ckpt.wait()
        assert ckpt.all_steps() == [2, 4]
    for d in ("2", "4"):
        for p in (tmp_path / "ck" / d / "state").rglob("*"):
            if p.is_file():
                p.write_bytes(b"")
    with CheckpointManager(tmp_path / "ck", keep=5) as ckpt:
        with pytest.raises(CheckpointError, match=r"no checkpoint in .* restores:\n  step 4: .*\n  step 2: "):
            ckpt.restore_latest(state, warn=warnings.append)
    with CheckpointManager(tmp_path / "empty", keep=5) as ckpt:
        assert ckpt.restore_latest(state) is None


def test_metrics_log_is_cut_back_to_the_restored_step(tmp_path):
    """Killed after step 8 with its last checkpoint at step 3 (and mid-way through writing a line):
    the resumed run's log reads 1..3 then the new steps, never going backwards."""
    from jaxfold.train.metrics_log import MetricsLog

    log = MetricsLog(tmp_path, tensorboard=False)
    for step in range(1, 9):
        log.record(step, {"loss": float(step)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "lo')  # torn line
    resumed = MetricsLog(tmp_path, tensorboard=False)
    assert resumed.truncate_after(3) == 6
    for step in range(4, 11):
        resumed.record(step, {"loss": float(step)})
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11))
    assert not list(tmp_path.glob("*.tmp"))
    assert MetricsLog(tmp_path / "none", tensorboard=False).truncate_after(0) == 0  # no file: nothing


def test_train_py_help_lists_every_preset():
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--help"], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    from jaxfold.config import available_presets

    for preset in available_presets():
        if preset not in ("base", "training_base"):
            assert preset in text, preset
    assert "--num-processes" in text and "JAX_COORDINATOR_ADDRESS" in text


def _train_py_stops(
    workdir: Path, data_dir: Path, alignment_dir: Path, env: dict, *args
) -> subprocess.CompletedProcess:
    """`train.py --config tiny` on `data_dir` / `alignment_dir`, output `workdir/out`, plus `args`, in `workdir`
    under `env`: for the runs that must stop at once with a usage error (two minutes at most)."""
    cmd = [sys.executable, str(REPO / "train.py"), "--config", "tiny", "--data-dir", str(data_dir)]
    cmd += ["--alignment-dir", str(alignment_dir), "--output-dir", str(workdir / "out"), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=workdir, env=env)


def test_train_py_multi_process_flags_need_a_coordinator(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COORDINATOR_ADDRESS", "JAX_PROCESS_ID")}
    proc = _train_py_stops(tmp_path, tmp_path, tmp_path, dict(env, JAX_PLATFORMS="cpu"), "--num-processes", "2")
    assert proc.returncode == 2 and "--coordinator HOST:PORT and --process-id" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_train_py_bad_data_leaves_no_output_folder(tmp_path, shared_dir):
    """Unusable data (no alignment folder for the listed chain): a one-line error, exit 2, and no
    output folder left behind."""
    chains = tmp_path / "chains.txt"
    chains.write_text("1psm_A\n")
    empty = tmp_path / "no_alignments"
    empty.mkdir()
    mmcif = shared_dir / "data" / "structures" / "mmcif"
    proc = _train_py_stops(tmp_path, mmcif, empty, _train_py_env(), "--chain-list", chains)
    assert proc.returncode == 2, proc.stderr
    assert "train.py: error: training data:" in proc.stderr and "1psm_a" in proc.stderr.lower()
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------
def test_background_evaluation_of_ema(toy_cfg, toy_step):
    from jaxfold.train.evaluation import Evaluator

    rng = np.random.default_rng(0)
    truth = rng.normal(size=(NUM_RES, 37, 3)).astype(np.float32) * 5
    ex = {"all_atom_positions": truth, "all_atom_mask": np.ones((NUM_RES, 37), np.float32), "name": "x_A"}

    def predict(params, features):  # perfect prediction scaled by a parameter: lDDT 1 at scale 1
        return features["all_atom_positions"] * params["scale"]

    ev = Evaluator(toy_cfg, [ex, dict(ex, name="y_B")], predict_fn=predict)
    params = {"scale": jnp.asarray(1.0)}
    assert ev.submit(10, params)
    ((step, m),) = ev.wait()
    assert step == 10 and m["num_chains"] == 2 and m["lddt_ca"] == pytest.approx(1.0)
    assert set(m["per_chain"]) == {"x_A", "y_B"}
    ev.submit(20, {"scale": jnp.asarray(3.0)})
    ((step, m),) = ev.wait()
    assert step == 20 and m["lddt_ca"] < 0.5


# ---------------------------------------------------------------------------
# train.py
# ---------------------------------------------------------------------------
def test_train_py_bad_mesh_names_both_numbers(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = _train_py_stops(tmp_path, tmp_path, tmp_path, env, "--mesh", "3x5")
    assert proc.returncode == 2, proc.stderr
    assert "dap 3" in proc.stderr and "data 5" in proc.stderr and "15 devices" in proc.stderr, proc.stderr
    assert "8 are available" in proc.stderr


# ---------------------------------------------------------------------------
# The real model (tiny preset, cut down further to keep XLA's compile time low)
# ---------------------------------------------------------------------------
def distogram_stand_in_loss(outputs, example):
    """Distogram cross-entropy against bins of a synthetic target (stand-in for jaxfold.losses)."""
    logits = outputs["distogram"]["logits"]
    edges = outputs["distogram"]["bin_edges"]
    pos = example["target_pos"]
    d = jnp.sqrt(jnp.sum((pos[:, None] - pos[None]) ** 2, -1) + 1e-8)
    labels = jax.nn.one_hot(jnp.sum(d[..., None] > edges, -1), logits.shape[-1])
    ce = -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(logits), -1))
    return ce, {"distogram": ce}


@pytest.mark.slow  # ~2-6 min of XLA compile on 2 shared CPU cores; run with -m slow
def test_alphafold_train_step_reduces_loss_and_skips_nan():
    cfg = model_config(
        "tiny",
        num_recycle=0,
        evoformer_num_block=1,
        structure_module_num_layer=1,
        use_remat=True,
        **{
            "model.embeddings_and_evoformer.template.enabled": False,
            "model.heads.masked_msa.weight": 0.0,
            "model.heads.experimentally_resolved.weight": 0.0,
            "model.heads.predicted_aligned_error.weight": 0.0,
            "model.heads.predicted_lddt.weight": 0.0,
            "training.learning_rate": 1e-3,
            "training.warmup_steps": 0,
        },
    )
    from jaxfold.model.init import init_params

    params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.PRNGKey(0))
    state = TrainState.create(params, make_optimizer(cfg), rng=0)
    examples = []
    for i in range(2):
        f = example(i)
        f["target_pos"] = 3.8 * np.cumsum(np.random.default_rng(i).normal(size=(NUM_RES, 3)), 0).astype(np.float32)
        examples.append(f)
    batch = stack_examples(examples)
    assert batch["target_pos"].shape == (2, NUM_RES, 3)  # ground truth without the recycling axis
    step = make_train_step(cfg, distogram_stand_in_loss)
    losses = []
    for _ in range(4):
        state, m = step(state, shard_batch(batch, None))
        losses.append(float(m["loss"]))
        assert int(m["skipped"]) == 0 and np.isfinite(float(m["grad_norm"]))
    assert losses[-1] < losses[0], losses
    before = host(state.params)
    bad = dict(batch, msa_feat=batch["msa_feat"].copy())
    bad["msa_feat"][0, 0, 0, 0, 0] = np.nan
    state, m = step(state, shard_batch(bad, None))
    assert int(m["skipped"]) == 1 and int(state.num_skipped) == 1 and int(state.step) == 5
    assert_trees_equal(state.params, before)


# ---------------------------------------------------------------------------
# train.py end to end: the real model, real losses, real chains
# ---------------------------------------------------------------------------
TINY_REAL_SETS = {
    "training.batch_size": 2,
    "data.train.crop_size": 40,
    "training.warmup_steps": 0,
    "training.num_workers": 1,
    "training.checkpoint_every": 10,
    "model.embeddings_and_evoformer.evoformer_num_block": 1,
    "model.embeddings_and_evoformer.template.enabled": "false",
    "data.common.use_templates": "false",
    "data.train.max_extra_msa": 16,
    "data.train.max_msa_clusters": 8,
}


def _train_py_cmd(shared_dir, workdir: Path, out: Path, extra_args=()) -> list[str]:
    data = shared_dir / "data"
    chains = workdir / "chains.txt"
    chains.write_text("1psm_A\n2q2k_A\n")
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        "--config",
        "tiny",
        "--data-dir",
        str(data / "structures" / "mmcif"),
        "--alignment-dir",
        str(data / "msas"),
        "--output-dir",
        str(out),
        "--chain-list",
        str(chains),
        "--num-steps",
        "20",
        *extra_args,
    ]
    for k, v in TINY_REAL_SETS.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd


@pytest.fixture(scope="module")
def train_py_compilation_cache(tmp_path_factory) -> Path:
    """One compilation cache for the real train.py runs: the resumed run loads the uninterrupted run's
    compiled step (minutes of compile on 2 cores) and must still end bit-identical to it."""
    return tmp_path_factory.mktemp("train_py_xla_cache")


def _train_py_env() -> dict:
    # One CPU device (the --mesh 1x1 default must use every device); keep conftest's other XLA flags.
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f)
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags)


def run_train_py(shared_dir, workdir: Path, out: Path, extra_args=()) -> subprocess.CompletedProcess:
    """train.py --config tiny (cut down by TINY_REAL_SETS) on 1psm_A and 2q2k_A, 20 steps, one CPU device."""
    return subprocess.run(
        _train_py_cmd(shared_dir, workdir, out, extra_args),
        capture_output=True,
        text=True,
        env=_train_py_env(),
        timeout=1500,
        cwd=workdir,
    )


@pytest.fixture(scope="module")
def tiny_real_run(tmp_path_factory, shared_dir, train_py_compilation_cache):
    """One uninterrupted 20-step run (checkpoints at 10 and 20, final evaluation on 1psm_A)."""
    work = tmp_path_factory.mktemp("train_real")
    eval_chains = work / "eval.txt"
    eval_chains.write_text("1psm_A\n")
    out = work / "out"
    cache = ["--compilation-cache", str(train_py_compilation_cache)]
    proc = run_train_py(shared_dir, work, out, ["--eval-chain-list", str(eval_chains), *cache])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_train_py_tiny_on_real_chains_loss_falls(tiny_real_run):
    """`train.py --config tiny` (one Evoformer block, no templates, crop 40: 1psm_A's 38 residues are
    padded, 2q2k_A's 70 cropped) on two real chains of ../shared/data with every AlphaFold loss: the
    total falls (the random network's clashes are learnt away first), and so do the distogram and
    masked-MSA terms; the run leaves checkpoints, a metrics log, loadable EMA parameters and an lDDT-Cα
    evaluation of the final EMA parameters. ~2.5 min on 2 CPU cores, almost all of it XLA compile."""
    out = tiny_real_run
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/lddt_ca" in r]
    assert [r["step"] for r in evals] == [20], evals  # eval_every (1000) is off the grid: final only
    assert 0.0 < evals[0]["eval/lddt_ca"] < 1.0 and evals[0]["eval/num_chains"] == 1
    log = [r for r in records if "loss" in r]
    assert [r["step"] for r in log] == list(range(1, 21))
    assert not any(r["skipped"] for r in log)
    for term in (
        "fape",
        "sidechain_fape",
        "chi_loss",
        "distogram",
        "masked_msa",
        "predicted_lddt",
        "experimentally_resolved",
        "violation_loss",
    ):
        assert all(np.isfinite(r[term]) for r in log), term
    first = lambda k: np.mean([r[k] for r in log[:3]])  # noqa: E731
    last = lambda k: np.mean([r[k] for r in log[-5:]])  # noqa: E731
    assert last("loss") < 0.7 * first("loss"), [r["loss"] for r in log]
    assert last("distogram") < first("distogram") and last("masked_msa") < first("masked_msa")
    assert sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == [10, 20]
    from jaxfold.weights import read_npz

    ema = read_npz(out / "params_ema.npz")
    assert len(ema) > 100 and all(np.all(np.isfinite(v)) for v in ema.values())


def test_train_py_resumes_real_run_bit_identically(tiny_real_run, shared_dir, tmp_path, train_py_compilation_cache):
    """A run that died after its step-10 checkpoint (the output folder as it was then: checkpoint 10
    only) is resumed by the same command and ends at step 20 with parameters, optimiser state, EMA and
    loader position bit-identical to the uninterrupted run's: no sample repeated or skipped. The resumed
    run loads the compiled step from the persistent compilation cache the first run wrote."""
    import orbax.checkpoint as ocp

    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(tiny_real_run / "checkpoints" / "10", out / "checkpoints" / "10")
    assert any(train_py_compilation_cache.iterdir()), "the uninterrupted run left no compiled programs"
    proc = run_train_py(shared_dir, tmp_path, out, ["--compilation-cache", str(train_py_compilation_cache)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr
    resumed_steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert resumed_steps == list(range(11, 21))
    ckpt = ocp.StandardCheckpointer()
    want = ckpt.restore(tiny_real_run / "checkpoints" / "20" / "state")
    got = ckpt.restore(out / "checkpoints" / "20" / "state")
    assert_trees_equal(got, want)
    loader_state = lambda root: json.loads((root / "checkpoints" / "20" / "loader" / "metadata").read_text())  # noqa: E731
    assert loader_state(out) == loader_state(tiny_real_run)
    assert loader_state(out)["next_position"] == 40  # 20 steps x batch 2, each sample once
    from jaxfold.weights import read_npz

    a, b = read_npz(out / "params_ema.npz"), read_npz(tiny_real_run / "params_ema.npz")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # two compilations of the real model (one under shard_map): several minutes on 2 CPU cores
@pytest.mark.parametrize("kernels", ["xla", "pallas"])
def test_dap_training_step_equals_single_device(shared_dir, tmp_path, kernels):
    """The real model and every AlphaFold loss on a real chain (1k1a_A cropped to 32): one training step
    with the trunk split over 2 devices (mesh 2x1, DAP) gives the loss, gradient norm and updated
    parameters of the unsplit step (dropout off: DAP draws per-shard masks by design). With
    kernels="pallas" both steps run the fused kernels (interpret mode here), their custom backward passes
    inside shard_map included; the fast sibling is test_dap.py's Pallas stack values-and-gradients test."""
    from jaxfold.data.dataset import TrainingDataset
    from jaxfold.losses import total_loss
    from jaxfold.model.init import init_params
    from jaxfold.train.step import loss_fn_from_config

    cfg = model_config(
        "tiny",
        num_recycle=0,
        evoformer_num_block=1,
        deterministic=True,
        **{
            "model.embeddings_and_evoformer.template.enabled": False,
            "data.common.use_templates": False,
            "data.train.crop_size": 32,
            "training.warmup_steps": 0,
            "model.global_config.kernels": kernels,
        },
    )
    lst = tmp_path / "chains.txt"
    lst.write_text("1k1a_A\n")
    ds = TrainingDataset(
        shared_dir / "data" / "structures" / "mmcif",
        shared_dir / "data" / "msas",
        cfg,
        chain_list=lst,
        crop_size=32,
        max_msa_clusters=8,
        max_extra_msa=16,
        num_recycle=0,
    )
    batch = stack_examples([device_batch(ds.sample(0, seed=0))])
    params = host(jax.jit(init_params, static_argnums=0)(cfg, jax.random.PRNGKey(0)))  # steps donate their state
    fresh = lambda: TrainState.create(jax.tree_util.tree_map(jnp.asarray, params), make_optimizer(cfg), rng=0)  # noqa: E731
    loss_fn = loss_fn_from_config(total_loss, cfg)
    mesh = make_mesh("2x1", devices=jax.devices()[:2])
    single, m1 = make_train_step(cfg, loss_fn)(fresh(), shard_batch(batch, None))
    sharded, m2 = make_train_step(cfg, loss_fn, mesh)(replicate(fresh(), mesh), shard_batch(batch, mesh))
    assert int(m1["skipped"]) == 0 and int(m2["skipped"]) == 0
    for k in ("loss", "fape", "distogram", "masked_msa", "violation_loss", "grad_norm"):
        np.testing.assert_allclose(float(m2[k]), float(m1[k]), rtol=1e-4, err_msg=k)
    for a, b in zip(jax.tree_util.tree_leaves(host(sharded.params)), jax.tree_util.tree_leaves(host(single.params))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow  # two more real train.py runs (~2.5 min each on 2 idle CPU cores, mostly XLA compile)
def test_train_py_killed_mid_run_resumes_from_last_complete_checkpoint(tiny_real_run, shared_dir, tmp_path):
    """`kill -9` of a real train.py after its step-10 checkpoint: no loader worker or resource tracker
    outlives it; a half-written checkpoint (an Orbax temporary folder, as a kill during the asynchronous
    write leaves) and a corrupt step-15 folder are skipped with a warning naming it; rerunning the same
    command resumes from step 10, and the metrics of steps 11..20 equal the uninterrupted run's."""
    import signal
    import time

    out = tmp_path / "out"
    proc = subprocess.Popen(
        _train_py_cmd(shared_dir, tmp_path, out),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_train_py_env(),
        cwd=tmp_path,
    )
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 1500
    try:
        while time.time() < deadline and proc.poll() is None:
            lines = metrics.read_text().splitlines() if metrics.exists() else []
            steps = [json.loads(x)["step"] for x in lines if x.endswith("}")]
            if (out / "checkpoints" / "10").is_dir() and steps and max(steps) >= 12:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "train.py finished before it could be killed"
        family = _descendants(proc.pid)
        assert family, "train.py has no loader worker"
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.5)
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(p) for p in family):
        time.sleep(0.2)
    assert not [p for p in family if _alive(p)], "children of the killed train.py survive it"
    killed_steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines() if x.endswith("}")]
    assert max(killed_steps) >= 12

    ckpts = out / "checkpoints"
    ten = ckpts / "10"
    partial = ckpts / "20.orbax-checkpoint-tmp-1"
    shutil.copytree(ten, partial)
    shutil.copytree(ten, ckpts / "15")
    for p in (ckpts / "15").rglob("*"):
        if p.is_file():
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
    for d in ckpts.iterdir():  # what the killed run may have written past step 10 goes; keep the test's
        if d.name.isdigit() and int(d.name) not in (10, 15):
            shutil.rmtree(d)

    proc = run_train_py(shared_dir, tmp_path, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr and f"{ckpts}/10" in proc.stderr, proc.stderr[-3000:]
    assert f"skipping checkpoint {ckpts}/15" in proc.stderr
    assert "Traceback" not in proc.stderr
    got = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [r["step"] for r in got] == list(range(1, 21))  # never backwards, nothing twice
    uninterrupted = (json.loads(x) for x in (tiny_real_run / "metrics.jsonl").read_text().splitlines())
    want = {r["step"]: r for r in uninterrupted if "loss" in r}
    for r in got[10:]:
        for k in ("loss", "fape", "distogram", "masked_msa", "grad_norm"):
            assert r[k] == want[r["step"]][k], (r["step"], k, r[k], want[r["step"]][k])
