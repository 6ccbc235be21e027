"""bench/long_sequence.py: its case specs (`DTYPE:N[:CHUNK]`), the same-run ratio against the unchunked case,
the progress a case reports (kept when its timeout stops it), and `--warm-cache` (compile in one process,
measure in another)."""

import pytest

from bench.long_sequence import add_unchunked_ratios, parse_case


def test_case_specs_take_an_optional_chunk_size():
    assert parse_case("bf16:2048", "auto") == ("bf16", 2048, "auto")
    assert parse_case("bf16:2048:0", "auto") == ("bf16", 2048, "0")
    assert parse_case("fp32:1200:64", "auto") == ("fp32", 1200, "64")
    for bad in ("bf16", "fp16:256", "bf16:long", "bf16:256:big", "bf16:256:64:1"):
        with pytest.raises(ValueError, match="case"):
            parse_case(bad, "auto")


def test_ratio_against_the_unchunked_run_of_the_same_case():
    rows = [
        {"mode": "full", "dtype": "bf16", "n_res": 2048, "status": "ok", "chunk_size_arg": "auto", "predict_s": 40.0},
        {"mode": "full", "dtype": "bf16", "n_res": 2048, "status": "ok", "chunk_size_arg": "0", "predict_s": 36.0},
        {"mode": "full", "dtype": "fp32", "n_res": 2048, "status": "ok", "chunk_size_arg": "auto", "predict_s": 9.0},
        {"mode": "full", "dtype": "bf16", "n_res": 1024, "status": "oom", "chunk_size_arg": "auto"},
    ]
    add_unchunked_ratios(rows)
    assert rows[0]["speed_vs_unchunked"] == pytest.approx(0.9)
    assert rows[1]["speed_vs_unchunked"] == pytest.approx(1.0)
    assert "speed_vs_unchunked" not in rows[2] and "speed_vs_unchunked" not in rows[3]  # no unchunked twin


def quick_args(**overrides):
    import argparse

    fields = dict(mode="full", dtype="fp32", n=24, n_msa=8, n_extra=16, n_templates=2, num_recycle=1)
    fields.update(kernels="auto", chunk_size="auto", quick=True, repeat=False)
    fields.update(warm_cache=False, compilation_cache=None, compile_only=False, preallocate=False)
    fields.update(overrides)
    return argparse.Namespace(**fields)


def test_a_case_reports_each_stage_as_it_goes(capsys):
    """The tiny model through `run_case`: a line when compiled and after every pass (what a case stopped by its
    timeout is reported from), then the result."""
    import json

    from bench.long_sequence import run_case

    row = run_case(quick_args())
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [line["status"] for line in lines] == ["compiled", "running", "running"]
    assert lines[0]["compile_s"] >= 0 and lines[0]["chunk_size"] == row["chunk_size"]
    assert [len(line["pass_s"]) for line in lines[1:]] == [1, 2]
    assert row["status"] == "ok" and row["finite"]


def test_a_timed_out_case_keeps_how_far_it_got(monkeypatch):
    import json
    import subprocess

    from bench import long_sequence

    progress = {"mode": "probe", "dtype": "bf16", "n_res": 10240, "status": "running", "pass_s": [114.0]}

    def stopped(*args, **kwargs):
        raise subprocess.TimeoutExpired("python", 5, output=(json.dumps(progress) + "\n").encode())

    monkeypatch.setattr(long_sequence, "run_module", stopped)
    row = long_sequence.spawn(quick_args(), "probe", "bf16:10240", timeout=5)
    assert row["status"] == "timeout" and row["reached"] == "running"
    assert row["pass_s"] == [114.0] and row["wall_s"] == 5

    def silent(*args, **kwargs):  # stopped before its first line
        raise subprocess.TimeoutExpired("python", 5)

    monkeypatch.setattr(long_sequence, "run_module", silent)
    row = long_sequence.spawn(quick_args(), "probe", "bf16:10240", timeout=5)
    assert row["status"] == "timeout" and row["n_res"] == 10240 and row["reached"] is None


def test_a_length_fits_when_its_case_finished_or_ran_a_whole_pass_before_its_timeout():
    from bench.long_sequence import fits

    assert fits({"status": "ok"})
    assert fits({"status": "timeout", "reached": "running"})
    assert not fits({"status": "timeout", "reached": "compiled"})  # no pass finished: not shown to fit
    assert not fits({"status": "timeout", "reached": None})
    assert not fits({"status": "oom"}) and not fits({"status": "too_long_error"})


def test_a_compile_only_case_stops_once_compiled(capsys):
    from bench.long_sequence import run_case

    row = run_case(quick_args(compile_only=True))
    assert row["status"] == "compiled" and row["compile_s"] >= 0  # 0 when this process already compiled it
    assert "predict_s" not in row and "pass_s" not in row


def test_warm_cache_compiles_in_one_process_and_predicts_in_a_second_that_shares_its_cache(monkeypatch):
    import json
    import subprocess

    from bench import long_sequence

    calls = []
    replies = [
        {"mode": "full", "dtype": "fp32", "n_res": 1200, "status": "compiled", "compile_s": 41.0, "peak_gib": 5.7},
        {"mode": "full", "dtype": "fp32", "n_res": 1200, "status": "ok", "compile_s": 0.4, "peak_gib": 4.6},
    ]

    def child(name, argv, timeout=None, env=None):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, stdout=json.dumps(replies[len(calls) - 1]) + "\n", stderr="")

    monkeypatch.setattr(long_sequence, "run_module", child)
    row = long_sequence.spawn(quick_args(warm_cache=True), "full", "fp32:1200:32", timeout=100)
    cold, warm = calls
    assert "--compile-only" in cold and "--compile-only" not in warm
    cache = cold[cold.index("--compilation-cache") + 1]
    assert warm[warm.index("--compilation-cache") + 1] == cache  # the second process loads what the first compiled
    assert row["status"] == "ok" and row["warm_cache"]
    assert row["peak_gib"] == 4.6 and row["cold_peak_gib"] == 5.7 and row["cold_compile_s"] == 41.0

    calls.clear()
    replies[0] = dict(replies[0], status="oom", error="RESOURCE_EXHAUSTED")  # compiling failed: no second process
    row = long_sequence.spawn(quick_args(warm_cache=True), "full", "fp32:1200:32", timeout=100)
    assert len(calls) == 1 and row["status"] == "oom" and row["warm_cache"] is False


@pytest.mark.parametrize("preallocate", [False, True])
def test_a_case_process_preallocates_only_when_asked(monkeypatch, preallocate):
    """Peaks are measured with preallocation off (the allocator grows region by region); `--preallocate` runs
    a case as infer.py does by default, the whole share taken as one region at start."""
    import json
    import subprocess

    from bench import long_sequence

    envs = []

    def child(name, argv, timeout=None, env=None):
        envs.append(env)
        reply = {"mode": "probe", "dtype": "fp32", "n_res": 8000, "status": "ok"}
        return subprocess.CompletedProcess(argv, 0, stdout=json.dumps(reply) + "\n", stderr="")

    monkeypatch.setattr(long_sequence, "run_module", child)
    row = long_sequence.spawn(quick_args(preallocate=preallocate), "probe", "fp32:8000", timeout=100)
    assert envs[0]["XLA_PYTHON_CLIENT_PREALLOCATE"] == ("true" if preallocate else "false")
    assert row["preallocated"] is preallocate

    envs.clear()  # with --warm-cache both processes, and a row whose compiling process failed says so too
    row = long_sequence.spawn(quick_args(preallocate=preallocate, warm_cache=True), "probe", "fp32:8000", 100)
    assert [e["XLA_PYTHON_CLIENT_PREALLOCATE"] for e in envs] == ["true" if preallocate else "false"]
    assert row["warm_cache"] is False and row["preallocated"] is preallocate  # reply "ok", not "compiled"


def test_a_probe_keeps_two_blocks_of_the_stacks_whose_msa_lives_across_blocks():
    from bench.long_sequence import probe_overrides
    from jaxfold.config import model_config

    cfg = model_config("model_1_ptm", **probe_overrides(3))
    emb = cfg.model.embeddings_and_evoformer
    assert emb.evoformer_num_block == 2 and emb.extra_msa_stack_num_block == 2
    assert emb.template.template_pair_stack.num_block == 1 and cfg.model.num_recycle == 1
    assert model_config("model_1_ptm", **probe_overrides(0)).model.num_recycle == 0
