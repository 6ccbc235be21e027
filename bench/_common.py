"""What every benchmark script shares: commit, device, peak memory, timing, child processes, results files.

The scripts run as modules from the repository root (`python -m bench.<name>`), so the repository root is
on `sys.path` and `jaxfold` / `pallas_kernels` import without installing the package (the GPU machine runs
them from a plain checkout). Scripts that run one process per case spawn `python -m bench.<name>` the same
way through `run_module`.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


# ------------------------------------------------------------------------------------------------------
# Where and what ran
# ------------------------------------------------------------------------------------------------------


def commit() -> str:
    """The commit measured: $JAXFOLD_COMMIT (set it on the GPU machine, whose copy of the tree may carry a stale
    .git), else `git rev-parse HEAD`, with "+dirty" when tracked files differ from it."""
    if os.environ.get("JAXFOLD_COMMIT"):
        return os.environ["JAXFOLD_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        head = out.stdout.strip()
        if not head:
            return "unknown"
        # Tracked files that differ from HEAD: the measured code is not HEAD's (a copied tree whose .git is
        # stale says so here rather than naming the wrong commit).
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return head + ("+dirty" if status.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_kind(device=None) -> str:
    """The accelerator's name, e.g. 'NVIDIA H100 80GB HBM3' (CPU: 'cpu')."""
    import jax  # noqa: PLC0415  (imported late: drivers that only spawn cases must not start a backend early)

    d = device if device is not None else jax.devices()[0]
    return getattr(d, "device_kind", str(d))


def device_info() -> dict:
    """{platform, device_kind, num_devices} of the default backend."""
    import jax  # noqa: PLC0415

    d = jax.devices()[0]
    return {"platform": d.platform, "device_kind": device_kind(d), "num_devices": jax.device_count()}


def jaxlib_version() -> str | None:
    try:
        import jaxlib  # noqa: PLC0415

        return getattr(jaxlib, "__version__", None)
    except Exception:  # noqa: BLE001
        return None


def peak_bytes(devices=None, stat: str = "peak_bytes_in_use") -> int | None:
    """Largest `memory_stats()[stat]` over `devices` (default: the first local device); None where the
    backend keeps no such statistic (CPU). `stat="peak_pool_bytes"`: the most the GPU allocator has held from
    the driver (its regions), beside the bytes in use."""
    import jax  # noqa: PLC0415

    peaks = []
    for d in devices if devices is not None else jax.local_devices()[:1]:
        try:
            stats = d.memory_stats() or {}
        except Exception:  # noqa: BLE001  (some backends raise instead of returning None)
            stats = {}
        if stat in stats:
            peaks.append(int(stats[stat]))
    return max(peaks) if peaks else None


def device_limit_bytes(device=None) -> int | None:
    """The allocator's `bytes_limit` (the memory a process may use), where reported."""
    import jax  # noqa: PLC0415

    d = device if device is not None else jax.local_devices()[0]
    try:
        return (d.memory_stats() or {}).get("bytes_limit")
    except Exception:  # noqa: BLE001
        return None


def is_oom(text: str) -> bool:
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def short_error(e: BaseException) -> str:
    """One line for a table: the exception's first line, 'OOM: ' first when it is out of memory."""
    msg = f"{type(e).__name__}: {e}"
    msg = msg.strip().splitlines()[0] if msg.strip() else type(e).__name__
    return "OOM: " + msg[:200] if is_oom(msg) else msg[:300]


# ------------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------------


def timed(fn, *args, repeats: int, fresh_args=None) -> tuple[float, list[float]]:
    """(seconds of the first call (compile + run), [seconds of each of `repeats` further calls]).

    Each call is waited for (`block_until_ready`). `fresh_args`: a function returning new arguments for every
    call after the first (for donated inputs); they are made and made ready before the clock starts.
    """
    import jax  # noqa: PLC0415

    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        if fresh_args is not None:
            args = jax.block_until_ready(fresh_args())
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return first, times


def median(times: list[float]) -> float:
    return statistics.median(times) if times else float("nan")


class Budget:
    """Wall-clock allowance of a run: scripts stop starting new rows when it is spent."""

    def __init__(self, seconds: float):
        self.t0 = time.perf_counter()
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.seconds - self.elapsed()


def compile_with_temp(f, args):
    """(`jax.jit(f)` compiled for `args`, XLA's temporary bytes for it or None where not reported)."""
    import jax  # noqa: PLC0415

    compiled = jax.jit(f).lower(*args).compile()
    temp = None
    try:
        ma = compiled.memory_analysis()
        if ma is not None:
            temp = int(ma.temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - some backends have no memory analysis
        pass
    return compiled, temp


def time_compiled(fn, args, quick: bool):
    """(median seconds per call, {inner, samples}) of an already compiled kernel-sized function: calls are
    batched `inner` at a time so that launch latency does not dominate a sub-millisecond kernel."""
    import jax  # noqa: PLC0415

    jax.block_until_ready(fn(*args))  # first call (also pays any autotuning)
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    t1 = max(time.perf_counter() - t0, 1e-6)
    if quick:
        inner, samples = 1, 2
    else:
        # Keep the GPU busy for ~0.25 s first: it idles (and clocks down) while the host compiles.
        n_warm = int(min(2000, max(2, 0.25 / t1)))
        out = None
        for _ in range(n_warm):
            out = fn(*args)
        jax.block_until_ready(out)
        inner = int(min(50, max(1, math.ceil(2e-3 / t1))))
        samples = int(min(10, max(5, 0.4 / (t1 * inner))))
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        out = None
        for _ in range(inner):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times), {"inner": inner, "samples": samples}


# ------------------------------------------------------------------------------------------------------
# One process per case
# ------------------------------------------------------------------------------------------------------


def run_module(name: str, argv: list[str], timeout: float | None = None, env: dict | None = None):
    """Run `python -m bench.<name> ARGV` from the repository root (PYTHONPATH = the root), capturing its
    output; `env` entries are added to this process's environment. Raises subprocess.TimeoutExpired."""
    child_env = dict(os.environ, **(env or {}))
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", f"bench.{name}", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env,
        cwd=REPO,
    )


def last_json_line(stdout: str, tag: str = "") -> dict | None:
    """The JSON of the last stdout line starting with `tag` (a child's result line), or None."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith(tag + "{")]
    return json.loads(lines[-1][len(tag) :]) if lines else None


# ------------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------------


def utc_stamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")


def file_safe(name: str) -> str:
    """A device name as a file-name part: 'NVIDIA H100 80GB HBM3' -> 'NVIDIA_H100_80GB_HBM3'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "unknown"


def write_results(out: str | Path | None, prefix: str, payload: dict, suffix: str = "", note: str = "") -> Path:
    """Write `payload` as JSON and return its path, adding commit, device, jax version and UTC time where
    the payload has not set them.

    `out`: None (bench/results/), a folder, or a path ending in .json (used as is). In a folder the name is
    `<prefix>-<device>-<UTC stamp><suffix>.json`, so runs never overwrite each other. Prints
    'wrote PATH<note>'.
    """
    import jax  # noqa: PLC0415

    payload = dict(payload)
    payload.setdefault("commit", commit())
    payload.setdefault("device", device_kind())
    payload.setdefault("jax", jax.__version__)
    stamp = utc_stamp()
    payload.setdefault("utc", stamp)
    path = Path(out) if out is not None else RESULTS
    if path.suffix != ".json":
        device = payload["device"]
        device = device.get("device_kind", "unknown") if isinstance(device, dict) else str(device)
        path = path / f"{prefix}-{file_safe(device)}-{stamp}{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str))
    print(f"wrote {path}{note}")
    return path


def record(rows: list[dict], row: dict, hide: tuple[str, ...] = ()) -> None:
    """Append `row` to `rows` and print it as one JSON line at once (a long run shows its progress, and a
    killed run leaves its finished rows in the log); `hide`: keys left out of the line."""
    rows.append(row)
    print(json.dumps({k: v for k, v in row.items() if k not in hide}), flush=True)


def print_header(title: str, header: str) -> None:
    """A table's title (after a blank line), its column headings and a rule under them."""
    print(f"\n{title}")
    print(header)
    print("-" * len(header))


def cell(value, spec: str = ".3f", width: int = 0) -> str:
    """`value` formatted with `spec` (numbers only), '-' when missing, right-aligned to `width`."""
    text = format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"
    return f"{text:>{width}}"


HLO_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+?)(?:\{[\d,]*\})? ")
HLO_OP_NAME = re.compile(r'op_name="([^"]*)"')


def hlo_instructions(hlo_text: str) -> dict[str, tuple[str, str]]:
    """Instruction name -> (result type, `op_name` of its metadata, "" when none) for every instruction of
    an HLO program's text (`compiled.as_text()` or an `--xla_dump_to` file). The op_name carries the JAX
    name stack (the Flax module path) of the line that made the instruction."""
    index = {}
    for line in hlo_text.splitlines():
        m = HLO_INSTRUCTION.match(line)
        if m:
            op = HLO_OP_NAME.search(line)
            index[m.group(1)] = (m.group(2), op.group(1) if op else "")
    return index


def device_kernel_profile(compiled, args, calls: int = 5, labels: tuple[str, ...] = ()) -> dict:
    """Where a compiled function's device time goes: run it `calls` times under `jax.profiler`, read the
    trace back (`jax.profiler.ProfileData`) and sum the GPU kernel events per kernel and per label.

    A kernel's label is the first of `labels` (e.g. the Evoformer's sub-module names) found in the name stack
    of its HLO instruction (`compiled.as_text()` metadata `op_name`, which carries the Flax module path;
    "bwd" is appended for instructions under `transpose(...)`); "other" when none matches.
    Returns {"total_ms", "calls", "by_label": {label: ms per call}, "top": [(kernel, label, ms per call, n)]},
    or {"error": ...} where the backend records no device kernels (CPU).
    """
    import glob  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    import jax  # noqa: PLC0415

    op_names = {name: op for name, (_, op) in hlo_instructions(compiled.as_text()).items() if op}

    def label_of(hlo_op: str) -> str:
        # Kernel names spell the instruction's "." as "_" (fusion.382 -> fusion_382) when no hlo_op stat is given.
        name = op_names.get(hlo_op) or op_names.get(re.sub(r"_(\d+)$", r".\1", hlo_op), "")
        found = next((label for label in labels if label in name), "other")
        return f"{found} bwd" if "transpose(" in name else found

    jax.block_until_ready(compiled(*args))
    with tempfile.TemporaryDirectory() as folder:
        jax.profiler.start_trace(folder)
        for _ in range(calls):
            out = compiled(*args)
        jax.block_until_ready(out)
        jax.profiler.stop_trace()
        paths = sorted(glob.glob(f"{folder}/**/*.xplane.pb", recursive=True))
        if not paths:
            return {"error": "no trace written"}
        data = jax.profiler.ProfileData.from_file(paths[-1])
    kernels: dict = {}
    for plane in data.planes:
        if not plane.name.startswith("/device:GPU"):
            continue
        for line in plane.lines:
            if "stream" not in line.name.lower():
                continue
            for event in line.events:
                stats = dict(event.stats)
                hlo_op = str(stats.get("hlo_op") or event.name)
                key = (event.name, label_of(hlo_op))
                total, count = kernels.get(key, (0.0, 0))
                kernels[key] = (total + event.duration_ns / 1e6, count + 1)
    if not kernels:
        return {"error": "no device kernel events (not a GPU?)"}
    by_label: dict = {}
    for (_, label), (ms, _) in kernels.items():
        by_label[label] = by_label.get(label, 0.0) + ms / calls
    top = sorted(((k, lab, ms / calls, n // calls) for (k, lab), (ms, n) in kernels.items()), key=lambda r: -r[2])
    return {
        "total_ms": sum(by_label.values()),
        "calls": calls,
        "by_label": dict(sorted(by_label.items(), key=lambda kv: -kv[1])),
        "top": top[:40],
    }
