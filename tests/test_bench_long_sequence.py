"""bench/long_sequence.py's case specs (`DTYPE:N[:CHUNK]`) and its same-run ratio against the unchunked case."""

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
