"""Multi-process training on one machine: 2 processes x 4 CPU devices joined by `jax.distributed` on
localhost (CPU collectives through gloo), `--mesh 2x4`, against a single process with 8 devices.

The loop is the real one (`jaxfold.train.loop.run_training`: per-process loading, shard_map data
parallelism, Orbax checkpoints, resume, metrics log) on real chains; the model is a stand-in that
compiles in seconds (tests/multiprocess_train_run.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CHAINS = "1psm_A\n2q2k_A\n4zey_A\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env() -> dict:
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f)
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags, PYTHONPATH=str(HERE.parent))


def run(out: Path, steps: int, processes: int, shared_dir: Path, timeout: int = 600) -> list[str]:
    """Start `processes` processes of one run; returns their stderr (all must exit 0)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.parent / "chains.txt").write_text(CHAINS)
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(HERE / "multiprocess_train_run.py"),
                str(out),
                str(steps),
                str(processes),
                str(i),
                str(port),
                str(shared_dir / "data"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for i in range(processes)
    ]
    logs = []
    try:
        for p in procs:
            _, err = p.communicate(timeout=timeout)
            logs.append(err)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, err in zip(procs, logs):
        assert p.returncode == 0, err[-4000:]
    return logs


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_equal_one_process_and_resume(shared_dir, tmp_path):
    """2 processes x 4 devices (`2x4` mesh) for 4 steps, then resumed by 2 processes to step 6, against
    1 process x 8 devices for 6 steps: the same examples in every global batch (each loaded by one
    process), losses and EMA parameters equal to round-off; checkpoints written once per step, with
    both processes' loader states; the metrics log reads steps 1..6 once."""
    single = tmp_path / "single" / "out"
    run(single, 6, 1, shared_dir)
    multi = tmp_path / "multi" / "out"
    run(multi, 4, 2, shared_dir)

    ckpts = sorted(p.name for p in (multi / "checkpoints").iterdir())
    assert ckpts == ["2", "4"], ckpts  # written once: no per-process copies, no leftovers
    loader = json.loads((multi / "checkpoints" / "4" / "loader" / "metadata").read_text())
    assert [s["next_position"] for s in loader["processes"]] == [8, 8]  # 4 steps x 2 rows, per process

    logs = run(multi, 6, 2, shared_dir)  # the same command with more steps: resumes from step 4
    assert "resumed from" in logs[0] and "checkpoints/4" in logs[0], logs[0][-2000:]

    a, b = records(single), records(multi)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 7))
    for ra, rb in zip(a, b):
        assert ra["example_id"] == rb["example_id"], (ra, rb)  # same examples, same order
        for k in ("loss", "ca_mse", "grad_norm"):
            np.testing.assert_allclose(rb[k], ra[k], rtol=2e-5, err_msg=f"step {ra['step']} {k}")
    assert len({r["example_id"] for r in a}) > 1  # the batches differ from step to step
    from jaxfold.weights import read_npz

    pa, pb = read_npz(single / "params_ema.npz"), read_npz(multi / "params_ema.npz")
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_allclose(pb[k], pa[k], rtol=1e-5, atol=1e-6, err_msg=k)
