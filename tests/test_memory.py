"""`chunk_size="auto"`: the memory estimate, the chunk it picks, and the clear error for a chain too long."""

import pytest

from jaxfold.config import model_config
from jaxfold.model import memory

GIB = memory.GIB
DEEP = dict(num_msa=512, num_extra_msa=5120, num_templates=4)


@pytest.fixture
def tiny_prediction():
    """(the predict module, config, features, parameters) of a tiny model at 24 residues, with no compiled
    program cached (the tests count and reuse them)."""
    import importlib

    import jax

    from bench.long_sequence import tiled_features
    from jaxfold.model.init import init_params

    predict_module = importlib.import_module("jaxfold.model.predict")
    cfg = model_config("tiny", num_recycle=1)
    predict_module.clear_compiled()
    return predict_module, cfg, tiled_features(24, 8, 16, 2, 2), init_params(cfg, jax.random.PRNGKey(0))


def test_short_chain_with_ample_memory_is_not_chunked():
    cfg = model_config("model_1_ptm")
    shapes = memory.ModelShapes(num_res=256, num_msa=512, num_extra_msa=1024, num_templates=4)
    assert memory.choose_chunk_size(shapes, cfg, "pallas", 80 * GIB) == 0
    bf16 = model_config("model_1_ptm", dtype="bfloat16")
    assert memory.choose_chunk_size(memory.ModelShapes(num_res=1024, **DEEP), bf16, "pallas", 80 * GIB) == 0


def test_larger_predictions_run_in_large_in_place_slices_even_when_they_would_fit():
    """fp32 N=1,024 with AlphaFold's deep MSA would fit 80 GB unchunked (~12 GiB), but large in-place slices
    take a third of that (the target: <= 10 GiB, AlphaFold's 10.7 GiB)."""
    cfg = model_config("model_1_ptm")
    shapes = memory.ModelShapes(num_res=1024, **DEEP)
    chunk = memory.choose_chunk_size(shapes, cfg, "pallas", 80 * GIB)
    assert chunk >= 256
    assert (
        memory.estimate_peak_bytes(shapes, cfg, chunk, "pallas")
        < 10 * GIB
        < memory.estimate_peak_bytes(shapes, cfg, 0, "pallas")
    )


def test_a_pass_that_fits_and_would_save_little_by_chunking_is_not_chunked():
    """bf16 N=2,048 with the deep MSA fits 75 GiB unchunked (~14 GiB), and a chunk as long as the chain saves
    nothing there: auto runs it unchunked, as fast as the unchunked pass, where slices of 1,024 cost time.
    Shorten the budget until the unchunked pass no longer fits, and it is chunked."""
    bf16 = model_config("model_1_ptm", dtype="bfloat16")
    shapes = memory.ModelShapes(num_res=2048, **DEEP)
    unchunked = memory.estimate_peak_bytes(shapes, bf16, 0, "pallas")
    assert unchunked > memory.UNCHUNKED_FRACTION * 75 * GIB  # not the short-chain rule
    assert memory.estimate_peak_bytes(shapes, bf16, 2048, "pallas") > (1 - memory.MIN_CHUNK_SAVING) * unchunked
    assert memory.choose_chunk_size(shapes, bf16, "pallas", 75 * GIB) == 0
    tight = int(unchunked / memory.DEFAULT_HEADROOM) - 1
    chunk = memory.choose_chunk_size(shapes, bf16, "pallas", tight)
    assert 0 < chunk < 2048
    assert memory.estimate_peak_bytes(shapes, bf16, chunk, "pallas") <= memory.DEFAULT_HEADROOM * tight


def test_deep_msa_fp32_xla_at_1024_is_chunked_to_fit():
    """AlphaFold's deep MSA at N=1,024 in fp32 with XLA attention: the extra-MSA row attention logits alone
    are 5,120 x 8 x 1,024^2 x 4 B = 172 GB unchunked; auto must pick a chunk that fits 10 GiB."""
    cfg = model_config("model_1_ptm")
    shapes = memory.ModelShapes(num_res=1024, **DEEP)
    assert memory.estimate_peak_bytes(shapes, cfg, 0, "xla") > 150e9
    chunk = memory.choose_chunk_size(shapes, cfg, "xla", 10 * GIB)
    assert chunk > 0
    assert memory.estimate_peak_bytes(shapes, cfg, chunk, "xla") <= memory.DEFAULT_HEADROOM * 10 * GIB
    # The largest size that fits: the next larger candidate would not.
    larger = [c for c in memory.CHUNK_CANDIDATES if c > chunk]
    if larger:
        assert memory.estimate_peak_bytes(shapes, cfg, min(larger), "xla") > memory.DEFAULT_HEADROOM * 10 * GIB


def test_estimate_grows_with_length_and_halves_pair_in_bf16():
    fp32, bf16 = model_config("model_1_ptm"), model_config("model_1_ptm", dtype="bfloat16")
    small, large = (memory.ModelShapes(num_res=n, **DEEP) for n in (2048, 4096))
    assert memory.estimate_peak_bytes(large, fp32, 64, "pallas") > 2.5 * memory.estimate_peak_bytes(
        small, fp32, 64, "pallas"
    )
    assert memory.estimate_peak_bytes(large, bf16, 64, "pallas") < 0.7 * memory.estimate_peak_bytes(
        large, fp32, 64, "pallas"
    )
    assert memory.estimate_peak_bytes(large, bf16, 0, "pallas", dap_size=2) < memory.estimate_peak_bytes(
        large, bf16, 0, "pallas"
    )
    # In place (a chunk size, one device) the pair has no second copy.
    assert memory.estimate_peak_bytes(large, bf16, 64, "pallas") < memory.estimate_peak_bytes(large, bf16, 0, "pallas")


def test_a_chain_that_fits_only_beyond_the_headroom_is_left_to_the_compiled_check():
    """Between 80% and all of the free memory the estimate does not refuse: it picks the largest chunk whose
    estimate fits the whole budget (predict then checks the compiled pass); below the one-row estimate it
    refuses before compiling."""
    cfg = model_config("model_1_ptm", dtype="bfloat16")
    shapes = memory.ModelShapes(num_res=11264, **DEEP)
    one_row = memory.estimate_peak_bytes(shapes, cfg, 1, "pallas")
    budget = int(one_row / 0.9)  # the one-row pass needs 90% of it: beyond the headroom, within the budget
    chunk = memory.choose_chunk_size(shapes, cfg, "pallas", budget)
    assert chunk >= 1
    assert memory.estimate_peak_bytes(shapes, cfg, chunk, "pallas") <= budget
    larger = [c for c in memory.CHUNK_CANDIDATES if c > chunk]
    assert not larger or memory.estimate_peak_bytes(shapes, cfg, min(larger), "pallas") > budget
    with pytest.raises(memory.ChainTooLongError):
        memory.choose_chunk_size(shapes, cfg, "pallas", int(one_row) - 1)


def test_chain_too_long_is_a_clear_error_naming_what_would_fit():
    cfg = model_config("model_1_ptm")
    shapes = memory.ModelShapes(num_res=20000, **DEEP)
    with pytest.raises(memory.ChainTooLongError) as err:
        memory.choose_chunk_size(shapes, cfg, "xla", 80 * GIB)
    text = str(err.value)
    assert "20000 residues" in text and "GiB" in text
    assert "--precision bf16" in text and "--mesh" in text and "--kernels pallas" in text


def test_chain_too_long_on_a_gpu_names_jax_s_share_of_the_device(monkeypatch):
    cfg = model_config("model_1_ptm", dtype="bfloat16")
    shapes = memory.ModelShapes(num_res=20000, **DEEP)
    monkeypatch.setattr(memory.jax, "default_backend", lambda: "gpu")
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    with pytest.raises(memory.ChainTooLongError, match=r"XLA_PYTHON_CLIENT_MEM_FRACTION=0\.75, the default"):
        memory.choose_chunk_size(shapes, cfg, "pallas", 59 * GIB)
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")  # already large: not a hint
    with pytest.raises(memory.ChainTooLongError) as err:
        memory.choose_chunk_size(shapes, cfg, "pallas", 75 * GIB)
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in str(err.value)


def test_infer_lets_jax_take_most_of_the_gpu_unless_told_otherwise():
    env = {}
    memory.claim_device_memory(env)
    assert env == {"XLA_PYTHON_CLIENT_MEM_FRACTION": memory.DEVICE_MEMORY_FRACTION}
    env = {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5"}  # the user's choice wins
    memory.claim_device_memory(env)
    assert env == {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5"}
    env = {}  # OpenMM on the GPU needs memory of its own
    memory.claim_device_memory(env, leave_room_for_openmm=True)
    assert env == {}


def test_infer_claims_the_gpu_share_from_its_parsed_options(monkeypatch):
    """infer.py decides from its parsed --relax-device (any spelling argparse accepts), before JAX starts."""
    from jaxfold import predict_command

    class Claimed(Exception):
        pass

    def claim(environ, leave_room_for_openmm):
        raise Claimed(leave_room_for_openmm)

    monkeypatch.setattr(predict_command, "claim_device_memory", claim)
    for argv, room in (([], False), (["--relax-dev=cuda"], True), (["--relax-device", "cpu"], False)):
        with pytest.raises(Claimed) as claimed:
            predict_command.run(["x.fasta", "--params", "random", *argv])
        assert claimed.value.args == (room,)


def test_budget_override_fakes_a_small_device(monkeypatch):
    monkeypatch.setenv("JAXFOLD_MEMORY_BUDGET_GIB", "1.5")
    assert memory.device_memory_budget() == int(1.5 * GIB)
    monkeypatch.delenv("JAXFOLD_MEMORY_BUDGET_GIB")
    assert memory.device_memory_budget() > 0


def test_kernels_switch_resolves_once_and_rejects_unknown_values():
    from jaxfold.model.kernels import resolve_kernels

    assert resolve_kernels("auto", backend="cpu") == "xla"
    assert resolve_kernels("auto", backend="gpu") == "pallas"
    assert resolve_kernels("xla", backend="gpu") == "xla"
    with pytest.raises(ValueError, match="unknown kernels 'triton'"):
        resolve_kernels("triton")


def test_autotuner_is_switched_off_only_where_pair_sized_buffers_cannot_fit(monkeypatch):
    """XLA's GPU autotuner times an instruction that reads or writes the whole pair on fresh pair-sized
    buffers (~3 of them): at N = 10,240 in bf16 that is 75 GiB, more than an 80 GB card gives JAX. There the
    prediction compiles without it; at N = 2,048 (4 GiB per pair) it stays on."""
    from jaxfold.model.predict import resolve_settings

    bf16 = model_config("model_1_ptm", dtype="bfloat16")
    fp32 = model_config("model_1_ptm")
    long, medium = memory.ModelShapes(num_res=10240, **DEEP), memory.ModelShapes(num_res=2048, **DEEP)
    assert not memory.autotuner_fits(long, bf16, 75 * GIB)
    assert memory.autotuner_fits(long, bf16, 75 * GIB, dap_size=2)  # DAP splits the pair
    assert memory.autotuner_fits(medium, bf16, 75 * GIB)
    assert not memory.autotuner_fits(memory.ModelShapes(num_res=7168, **DEEP), fp32, 75 * GIB)

    _, settings = resolve_settings(bf16, long, kernels="pallas", chunk_size="auto", budget_bytes=75 * GIB)
    assert settings.autotune is False and settings.chunk_size > 0
    assert settings.compiler_options() == {}  # this is a CPU: no autotuner to switch off
    monkeypatch.setattr("jax.default_backend", lambda: "gpu")
    assert settings.compiler_options() == {"xla_gpu_autotune_level": 0}
    _, settings = resolve_settings(bf16, medium, kernels="pallas", chunk_size="auto", budget_bytes=75 * GIB)
    assert settings.autotune is True and settings.compiler_options() == {}


def test_a_prediction_compiled_without_the_autotuner_is_cached_apart_and_gives_the_same_outputs(
    monkeypatch, tiny_prediction
):
    """`predict` passes `RunSettings.compiler_options()` to XLA: the programs compiled with the autotuner off
    (here forced; XLA's CPU compiler accepts the option and has nothing to tune) are a separate cache entry
    and compute the same prediction."""
    import numpy as np

    predict_module, cfg, features, params = tiny_prediction
    plain = predict_module.predict(cfg, params, features, kernels="xla", chunk_size=8, outputs="lean")
    monkeypatch.setattr(predict_module.RunSettings, "compiler_options", lambda self: {"xla_gpu_autotune_level": 0})
    timings: dict = {}
    untuned = predict_module.predict(
        cfg, params, features, kernels="xla", chunk_size=8, outputs="lean", timings=timings
    )
    assert timings["compile"] > 0  # not the first program from the cache
    assert len(predict_module._PROGRAMS) == 2
    for key, value in plain.items():
        np.testing.assert_allclose(untuned[key], value, rtol=1e-5, atol=1e-5, err_msg=key)


def test_a_compiled_pass_that_cannot_fit_is_recompiled_smaller_under_auto_and_refused_otherwise(
    monkeypatch, tiny_prediction
):
    """XLA's memory analysis of the compiled pass is checked against the free memory before anything runs.
    With `chunk_size="auto"` a pass whose estimate fitted but whose compiled program does not is compiled
    again at the largest smaller chunk the estimate says saves enough (here auto is faked to pick unchunked
    first); when no chunk would, or with a chunk the user chose, it is a ChainTooLongError
    naming what the program needs, not an XLA failure."""
    import numpy as np

    predict_module, cfg, features, params = tiny_prediction
    resident = predict_module._resident_bytes(params)
    timings: dict = {}
    chunked = predict_module.predict(
        cfg, params, features, kernels="xla", chunk_size=16, outputs="lean", timings=timings
    )
    compiled = timings["compiled_bytes"]
    need_16 = memory.compiled_program_bytes([compiled["iteration"], compiled["heads"]], resident_bytes=resident)

    with pytest.raises(memory.ChainTooLongError, match=r"compiled prediction pass \(chunk size 16\) needs"):
        predict_module.predict(cfg, params, features, kernels="xla", chunk_size=16, budget_bytes=need_16 - 1)

    # Auto first picks unchunked, and the (faked) estimate says chunking saves the whole pass.
    fake = {0: need_16}
    monkeypatch.setattr(memory, "choose_chunk_size", lambda *args, **kwargs: 0)
    monkeypatch.setattr(memory, "estimate_peak_bytes", lambda shapes, config, chunk, *a, **k: fake.get(chunk, 0))
    timings = {}
    with pytest.warns(RuntimeWarning, match="compiling again with chunk size 16"):
        auto = predict_module.predict(
            cfg,
            params,
            features,
            kernels="xla",
            chunk_size="auto",
            outputs="lean",
            timings=timings,
            budget_bytes=need_16,
        )
    assert timings["settings"].chunk_size == 16
    fake[0] = 1  # chunking would save a byte: one compile, then the clear error rather than six more compiles
    with pytest.raises(
        memory.ChainTooLongError,
        match=r"chunk size none\) needs [0-9.]+ MiB of device memory, but [0-9.]+ MiB is free\. "
        r"What would fit: --precision bf16",
    ):
        predict_module.predict(cfg, params, features, kernels="xla", chunk_size="auto", budget_bytes=need_16)
    for key, value in chunked.items():
        np.testing.assert_array_equal(auto[key], value, err_msg=key)
