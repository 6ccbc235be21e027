"""`python -m jaxfold.params download DIR` against a local HTTP server (127.0.0.1 only, no internet).

The archive is built here from the shrunk official-format reference parameters. Every failure
(truncated transfer, corrupt tar, wrong checksum, archive without parameters, unsafe member,
corrupt .npz) must give a clear error and leave DIR exactly as it was.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from jaxfold.params import ParamsDownloadError, download_params, main

REPO = Path(__file__).resolve().parents[1]


def _tar_bytes(members: dict) -> bytes:
    """A tar archive in memory: {name: bytes}."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict = {}

    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):  # noqa: N802 - http.server's naming
        name = self.path.lstrip("/")
        if name not in self.files:
            self.send_error(404, "not found")
            return
        data = self.files[name]
        truncate = name.startswith("truncated")
        self.send_response(200)
        self.send_header("Content-Type", "application/x-tar")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 3] if truncate else data)
        self.wfile.flush()
        if truncate:
            self.close_connection = True


@pytest.fixture(scope="module")
def npz_bytes(shared_dir) -> bytes:
    return (shared_dir / "reference" / "params" / "params_model_1_ptm_shrunk.npz").read_bytes()


@pytest.fixture(scope="module")
def server(npz_bytes):
    """A local server for the test archives; shut down (and its thread joined) after the module."""
    good = _tar_bytes({"params_model_1_ptm.npz": npz_bytes, "LICENSE": b"CC BY 4.0\n"})
    corrupt_npz = bytearray(npz_bytes)
    corrupt_npz[len(corrupt_npz) // 2 : len(corrupt_npz) // 2 + 64] = b"\0" * 64
    files = {
        "good.tar": good,
        "truncated.tar": good,
        "garbage.tar": os.urandom(4096),
        "noparams.tar": _tar_bytes({"README": b"nothing here\n"}),
        "traversal.tar": _tar_bytes({"params_model_1.npz": npz_bytes, "../evil.npz": b"x"}),
        "badnpz.tar": _tar_bytes({"params_model_2.npz": bytes(corrupt_npz)}),
    }
    handler = type("Handler", (_Handler,), {"files": files})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    httpd.timeout = 10
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", files
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def _snapshot(directory: Path) -> dict:
    if not directory.exists():
        return {}
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _leftovers(parent: Path) -> list:
    return [p.name for p in parent.iterdir() if ".download-" in p.name]


def test_download_verifies_and_extracts(server, npz_bytes, tmp_path):
    url, files = server
    target = tmp_path / "params"
    sha = hashlib.sha256(files["good.tar"]).hexdigest()
    written = download_params(target, url=f"{url}/good.tar", sha256=sha, size=len(files["good.tar"]), progress=False)
    assert sorted(p.name for p in written) == ["LICENSE", "params_model_1_ptm.npz"]
    assert (target / "params_model_1_ptm.npz").read_bytes() == npz_bytes
    with np.load(target / "params_model_1_ptm.npz") as data:
        assert len(data.files) == 338
        assert any(
            k.endswith("evoformer_iteration/triangle_multiplication_outgoing/left_projection//weights")
            for k in data.files
        )
    assert not _leftovers(tmp_path)

    # Parameters already there: refused without --force, replaced with it.
    with pytest.raises(ParamsDownloadError, match="--force"):
        download_params(target, url=f"{url}/good.tar", progress=False)
    (target / "params_model_1_ptm.npz").write_bytes(b"old")
    download_params(target, url=f"{url}/good.tar", progress=False, force=True)
    assert (target / "params_model_1_ptm.npz").read_bytes() == npz_bytes


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("truncated.tar", {}, r"truncated|interrupted"),
        ("garbage.tar", {}, r"not a readable tar archive"),
        ("noparams.tar", {}, r"no params_model_\*\.npz"),
        ("traversal.tar", {}, r"not a plain file at the top level"),
        ("badnpz.tar", {}, r"params_model_2\.npz .*(not a readable \.npz|corrupt)"),
        ("good.tar", {"sha256": "0" * 64}, r"SHA-256 mismatch"),
        ("good.tar", {"size": 123}, r"expected 123"),
        ("missing.tar", {}, r"HTTP 404"),
    ],
)
def test_bad_downloads_leave_dir_untouched(server, tmp_path, name, kwargs, message):
    url, _ = server
    # An existing DIR with earlier content (and no parameters): must stay byte-identical.
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("keep me\n")
    before = _snapshot(existing)
    with pytest.raises(ParamsDownloadError, match=message):
        download_params(existing, url=f"{url}/{name}", progress=False, timeout=10, **kwargs)
    assert _snapshot(existing) == before
    # A DIR that does not exist yet must still not exist afterwards.
    fresh = tmp_path / "fresh"
    with pytest.raises(ParamsDownloadError, match=message):
        download_params(fresh, url=f"{url}/{name}", progress=False, timeout=10, **kwargs)
    assert not fresh.exists()
    assert not _leftovers(tmp_path)


def test_unreachable_server_is_a_clear_error(tmp_path):
    # Port 9 on the loopback (discard) is closed here: connection refused, no traffic elsewhere.
    with pytest.raises(ParamsDownloadError, match="download failed"):
        download_params(tmp_path / "p", url="http://127.0.0.1:9/x.tar", progress=False, timeout=5)
    assert not (tmp_path / "p").exists()


def test_cli(server, tmp_path, capsys):
    url, _ = server
    assert main(["download", str(tmp_path / "ok"), "--url", f"{url}/good.tar", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "params_model_1_ptm.npz" in out and "--params" in out
    assert main(["download", str(tmp_path / "bad"), "--url", f"{url}/garbage.tar", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "left unchanged" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_module_entry_point(server, tmp_path):
    """`python -m jaxfold.params download` as a user runs it: exit status, one error line, no traceback."""
    url, _ = server
    env = dict(os.environ, no_proxy="127.0.0.1,localhost")
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(var, None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxfold.params",
            "download",
            str(tmp_path / "d"),
            "--url",
            f"{url}/truncated.tar",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ")
    assert "truncated" in proc.stderr or "interrupted" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()
