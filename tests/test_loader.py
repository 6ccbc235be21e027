"""Tests of jaxfold.data.loader.Loader: ordering, determinism, resume, errors, shutdown."""

from __future__ import annotations

import collections
import multiprocessing
import os
import time

import numpy as np
import pytest

from jaxfold.data.loader import Loader, LoaderError


class CheapDataset:
    """sample(k, seed) is a pure function of (k, seed); picklable (module level)."""

    def __init__(self, delays=None, fail_at=None):
        self.delays = dict(delays or {})
        self.fail_at = fail_at

    def sample(self, k, seed):
        if k == self.fail_at:
            raise ValueError("corrupt alignment file")
        if k in self.delays:
            time.sleep(self.delays[k])
        rng = np.random.default_rng([seed, k])
        return {"x": rng.standard_normal(4).astype(np.float32), "k": np.asarray(k)}

    def chain_for(self, k, seed):
        return f"fake_{k % 3}"


def _positions(batches):
    return [int(p) for b in batches for p in b["sample_position"]]


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_in_process_order_and_content():
    with Loader(CheapDataset(), batch_size=3, num_workers=0, seed=4, num_steps=4) as ld:
        batches = list(ld)
    assert len(batches) == 4
    assert _positions(batches) == list(range(12))
    b = batches[1]
    assert b["x"].shape == (3, 4) and b["k"].tolist() == [3, 4, 5]
    np.testing.assert_array_equal(b["x"][0], CheapDataset().sample(3, 4)["x"])


def test_multiset_determinism_across_worker_counts():
    def run(workers):
        with Loader(CheapDataset(), batch_size=4, num_workers=workers, seed=11, num_steps=5) as ld:
            bs = list(ld)
        return sorted((int(p), tuple(x)) for b in bs for p, x in zip(b["sample_position"], b["x"].tolist()))

    a, b = run(0), run(2)
    assert a == b
    assert [p for p, _ in a] == list(range(20))


def test_slow_sample_does_not_stall():
    ds = CheapDataset(delays={1: 4.0})
    t0 = time.perf_counter()
    times = []
    with Loader(ds, batch_size=2, num_workers=2, seed=0, queue_size=6, num_steps=4) as ld:
        batches = []
        for b in ld:
            batches.append(b)
            times.append(time.perf_counter() - t0)
    pos = _positions(batches)
    assert sorted(pos) == list(range(8))
    assert 1 not in pos[:2]  # the slow sample did not hold up the first batch
    assert pos.index(1) >= 2  # ... it arrived later, out of order
    assert times[0] < times[-1] - 1.0  # the first batch came well before the slow one


def test_resume_neither_repeats_nor_skips():
    ds = CheapDataset(delays={2: 2.0})
    with Loader(ds, batch_size=2, num_workers=2, seed=3, queue_size=6) as ld:
        it = iter(ld)
        first = [next(it), next(it)]
        state = ld.state_dict()
    assert state["step"] == 2
    assert state["pending"]  # in-flight samples were outstanding
    consumed = _positions(first)
    assert set(consumed).isdisjoint(state["pending"])
    with Loader.from_state(ds, state, num_workers=0, num_steps=4) as ld2:
        rest = list(ld2)
        assert ld2.step == 6
    pos = consumed + _positions(rest)
    counts = collections.Counter(pos)
    assert max(counts.values()) == 1  # no repeat
    assert set(range(max(pos) + 1)) == set(pos)  # no gap
    assert sorted(pos) == list(range(12))


def test_start_step_skips_consumed_positions():
    with Loader(CheapDataset(), batch_size=2, num_workers=0, seed=0, start_step=3, num_steps=1) as ld:
        assert _positions(list(ld)) == [6, 7]


@pytest.mark.parametrize("workers", [0, 2])
def test_worker_error_names_sample(workers):
    with Loader(CheapDataset(fail_at=5), batch_size=2, num_workers=workers, seed=9, num_steps=4) as ld:
        with pytest.raises(
            LoaderError,
            match=r"position 5 \(seed 9, chain fake_2\).*"
            r"ValueError: corrupt alignment file",
        ):
            list(ld)


def test_clean_shutdown_no_leftover_processes():
    ds = CheapDataset(delays={k: 30.0 for k in range(4, 40)})  # still in flight at exit
    # Children of earlier tests (e.g. a process pool still being reaped) are not this loader's to clean up.
    earlier = {p.pid for p in multiprocessing.active_children()}
    t0 = time.perf_counter()
    with Loader(ds, batch_size=2, num_workers=2, seed=0, queue_size=8) as ld:
        it = iter(ld)
        next(it)
        pids = list(ld._executor._processes)  # noqa: SLF001
        assert pids and all(_alive(p) for p in pids)
    assert time.perf_counter() - t0 < 20
    assert not any(_alive(p) for p in pids)
    assert not [p for p in multiprocessing.active_children() if p.pid not in earlier]
    assert os.getpid()  # parent alive


def test_real_dataset_in_workers(tmp_path, shared_dir):
    from jaxfold.config import model_config
    from jaxfold.data.dataset import TrainingDataset

    data = shared_dir / "data"
    lst = tmp_path / "chains.txt"
    lst.write_text("2q2k_A\n4zey_A\n")
    ds = TrainingDataset(
        data / "structures" / "mmcif",
        data / "msas",
        model_config("model_1_ptm", num_recycle=1, **{"data.common.use_templates": False}),
        chain_list=lst,
        crop_size=32,
        max_msa_clusters=8,
        max_extra_msa=8,
        ground_truth=False,
    )
    with Loader(ds, batch_size=2, num_workers=2, seed=1, num_steps=2) as ld:
        batches = list(ld)
    b = batches[0]
    assert b["msa_feat"].shape[:3] == (2, 2, 4) and b["msa_feat"].shape[3] == 32
    assert b["all_atom_positions"].shape == (2, 32, 37, 3)
    ref = {int(s): ds.sample(int(s), 1) for bb in batches for s in bb["sample_position"]}
    for bb in batches:
        for i, p in enumerate(bb["sample_position"]):
            np.testing.assert_array_equal(bb["msa_feat"][i], ref[int(p)]["msa_feat"])


def test_process_shards_cover_each_global_batch_exactly_once():
    """P processes, each loading its ProcessShard with batch B/P, together load global batch i =
    positions [i*B, (i+1)*B) exactly once, process p holding rows [p*B/P, (p+1)*B/P) in order."""
    from jaxfold.data.loader import ProcessShard

    ds, big_b, steps = CheapDataset(), 8, 3
    for procs in (1, 2, 4):
        rows = []
        for p in range(procs):
            with Loader(ProcessShard(ds, big_b, p, procs), batch_size=big_b // procs, seed=5, num_steps=steps) as ld:
                rows.append([[int(k) for k in b["k"]] for b in ld])
        for i in range(steps):
            assert sum((rows[p][i] for p in range(procs)), []) == list(range(i * big_b, (i + 1) * big_b))
    with pytest.raises(ValueError, match="not divisible"):
        ProcessShard(ds, 6, 0, 4)


_ORPHAN_SCRIPT = """
import sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
from test_loader import CheapDataset
from jaxfold.data.loader import Loader
if __name__ == "__main__":  # spawned workers re-import this file
    ld = Loader(CheapDataset(delays={{k: 60.0 for k in range(100)}}), batch_size=2, num_workers=2, queue_size=8)
    ld._fill()
    time.sleep(1.0)  # the pool starts its workers on demand
    print(" ".join(str(p) for p in ld._executor._processes), flush=True)
    time.sleep(120)
"""


def test_workers_exit_when_the_parent_is_killed(tmp_path):
    """`kill -9` of the process owning a Loader: its workers (and the resource tracker, which exits
    when the last holder of its pipe does) do not outlive it."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    script = tmp_path / "owner.py"
    script.write_text(_ORPHAN_SCRIPT.format(root=str(here.parent), tests=str(here)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(p) for p in workers)
        time.sleep(1.0)  # the workers are inside their 60 s samples
        children = _children_of(proc.pid)
        assert set(workers) <= children
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in children):
        time.sleep(0.2)
    assert not [p for p in children if _alive(p)], "loader processes outlived their parent"


def _children_of(pid: int) -> set[int]:
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.add(int(d))
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                pass
    return out
