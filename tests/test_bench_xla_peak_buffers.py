"""bench/xla_peak_buffers.py: the values live at a dumped program's peak, joined with their instructions."""

import gzip

import pytest

from bench.xla_peak_buffers import peak_values, report

# The shape of XLA's dump files (from a CPU compile of fp32 N=1,200, chunk 16), cut down.
LIVE_RANGE = """HloLiveRange (max 3329):
  InstructionSequence:
    0:params.1
  BufferLiveRange:
    copy.591{}:737-739
  Live ranges at 673 (peak):
    add_dynamic-update-slice_fusion{}: 1572864000 bytes (cumulative: 1572864000 bytes)
    arg_tuple.12{1}: 1572864000 bytes (cumulative: 3145728000 bytes)
    bitcast_broadcast_fusion.28{}: 624230400 bytes (cumulative: 3769958400 bytes)
    copy.805{}: 917504 bytes (cumulative: 3770875904 bytes)
  Live ranges at 900:
    other{}: 1 bytes (cumulative: 1 bytes)
"""
PROGRAM = "\n".join(
    [
        "HloModule jit_iteration",
        "  %arg_tuple.12 = (s32[], f32[5120,1200,64]{2,1,0}) parameter(0)",
        "  %add_dynamic-update-slice_fusion = f32[5120,1200,64]{2,1,0} fusion(%a, %b), kind=kLoop, "
        'metadata={op_name="jit(iteration)/evoformer/while/body/dynamic_update_slice" stack_frame_id=3705}',
        "  ROOT %bitcast_broadcast_fusion.28 = f32[508,1200,256]{2,1,0} fusion(%batch__msa_feat__.1), kind=kLoop, "
        'metadata={op_name="jit(iteration)/evoformer/broadcast_in_dim"}',
    ]
)


def write_dump(folder, compress):
    names = {
        "live-range": "module_0000.jit_iteration.cpu_after_optimizations-live-range.txt",
        "program": "module_0000.jit_iteration.cpu_after_optimizations.txt",
    }
    for key, text in (("live-range", LIVE_RANGE), ("program", PROGRAM)):
        path = folder / (names[key] + (".gz" if compress else ""))
        if compress:
            with gzip.open(path, "wt") as f:
                f.write(text)
        else:
            path.write_text(text)


def test_peak_section_is_read_to_its_end():
    position, values = peak_values(LIVE_RANGE)
    assert position == 673
    assert [name for name, _ in values] == [
        "add_dynamic-update-slice_fusion{}",
        "arg_tuple.12{1}",
        "bitcast_broadcast_fusion.28{}",
        "copy.805{}",
    ]
    assert values[2][1] == 624230400


@pytest.mark.parametrize("compress", [False, True])
def test_report_names_each_large_value_with_its_shape_and_op(tmp_path, compress, capsys):
    write_dump(tmp_path, compress)
    rows = report(tmp_path, "jit_iteration", min_bytes=2**20)
    assert [r["value"] for r in rows] == [
        "add_dynamic-update-slice_fusion{}",
        "arg_tuple.12{1}",
        "bitcast_broadcast_fusion.28{}",
    ]  # copy.805 is under the 1 MiB floor
    assert rows[0]["shape"] == "f32[5120,1200,64]" and rows[0]["op_name"].endswith("dynamic_update_slice")
    assert rows[2]["shape"] == "f32[508,1200,256]" and rows[2]["op_name"].endswith("broadcast_in_dim")
    assert "peak at schedule position 673" in capsys.readouterr().out


def test_a_folder_without_a_dump_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no jit_iteration dump"):
        report(tmp_path, "jit_iteration", 0)
