"""The buffers live at a compiled program's memory peak, from an XLA dump: what a memory target is up against.

    XLA_FLAGS="--xla_dump_to=DUMP --xla_dump_hlo_module_re=jit_iteration" python -m bench.long_sequence ...
    python -m bench.xla_peak_buffers DUMP [--module jit_iteration] [--min-mib 64]

XLA writes, per compiled module, `*-live-range.txt` (the values live at the peak of the buffer assignment)
and `*after_optimizations.txt` (the program). This joins the two: each value at the peak of at least
`--min-mib`, largest first, with its shape and the JAX op it comes from (the `op_name` of its instruction's
metadata), so that a buffer can be traced to the line of the model that makes it. Files may be gzipped
(`.txt.gz`), as they come back from a GPU machine.

XLA's list names a while loop's operand and the loop's parameter as two values; the sum of the list can
therefore be above the compiled program's `temp + argument` bytes. The peak's instruction number is XLA's
schedule position (`Live ranges at N (peak)`).
"""

from __future__ import annotations

import argparse
import gzip
import re
import sys
from pathlib import Path

from bench._common import hlo_instructions

PEAK_HEADER = re.compile(r"Live ranges at (\d+) \(peak\):")
PEAK_VALUE = re.compile(r"^\s+(\S+?)(\{[\d,]*\})?: (\d+) bytes")


def read_text(path: Path) -> str:
    return gzip.open(path, "rt").read() if path.suffix == ".gz" else path.read_text()


def find_dump_file(folder: Path, module: str, kind: str) -> Path:
    """The dump file of `module` whose name ends with `kind` (+ `.txt` or `.txt.gz`); a clear error if none."""
    matches = sorted(p for p in folder.iterdir() if module in p.name and re.search(rf"{kind}\.txt(\.gz)?$", p.name))
    if not matches:
        raise SystemExit(f"{folder}: no {module} dump ending in {kind}.txt (run with XLA_FLAGS=--xla_dump_to=...)")
    return matches[-1]


def peak_values(live_range_text: str) -> tuple[int, list[tuple[str, int]]]:
    """(schedule position of the peak, [(value name, bytes)]) from a `*-live-range.txt` dump."""
    lines = live_range_text.splitlines()
    for i, line in enumerate(lines):
        header = PEAK_HEADER.search(line)
        if header:
            values = []
            for value_line in lines[i + 1 :]:
                m = PEAK_VALUE.match(value_line)
                if not m:
                    break
                values.append((m.group(1) + (m.group(2) or ""), int(m.group(3))))
            return int(header.group(1)), values
    raise SystemExit("no 'Live ranges at N (peak):' section in the live-range dump")


def report(folder: Path, module: str, min_bytes: int) -> list[dict]:
    position, values = peak_values(read_text(find_dump_file(folder, module, "live-range")))
    index = hlo_instructions(read_text(find_dump_file(folder, module, "after_optimizations")))
    rows = []
    for name, size in values:
        if size < min_bytes:
            continue
        shape, op_name = index.get(name.split("{")[0], ("?", ""))
        rows.append({"value": name, "bytes": size, "shape": shape, "op_name": op_name})
    total = sum(size for _, size in values)
    print(f"{module}: peak at schedule position {position}; {len(values)} values, {total / 2**30:.2f} GiB in all")
    for r in rows:
        print(f"{r['bytes'] / 2**30:9.2f} GiB  {r['value']:<48} {r['shape']:<40} {r['op_name'][-110:]}")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dump", type=Path, help="the --xla_dump_to folder")
    p.add_argument("--module", default="jit_iteration", help="a part of the module's file name")
    p.add_argument("--min-mib", type=float, default=64.0, help="list values of at least this many MiB")
    args = p.parse_args(argv)
    if not args.dump.is_dir():
        raise SystemExit(f"{args.dump}: not a folder")
    report(args.dump, args.module, int(args.min_mib * 2**20))
    return 0


if __name__ == "__main__":
    sys.exit(main())
