"""Download DeepMind's official AlphaFold2 parameters: ``python -m jaxfold.params download DIR``.

Fetches the public archive (``alphafold_params_2022-12-06.tar``: ``params_model_{1..5}.npz``,
``params_model_{1..5}_ptm.npz``, the multimer parameters and the licence; CC BY 4.0), streaming
it to a temporary file beside DIR with a progress bar, then verifies it before anything lands in
DIR:

* the byte count equals the server's ``Content-Length`` (a cut-off download is caught), and
  ``--size`` when given;
* the SHA-256 equals ``--sha256`` when given;
* the file is a readable tar whose members are plain files with safe names, holding at least one
  ``params_model_*.npz``, each of them a readable zip (``.npz``) archive.

Only then are the files extracted into a temporary folder and moved into DIR (a new DIR is one
atomic rename; in an existing DIR each file is replaced atomically). Any failure leaves DIR as it
was and removes the temporary files. ``--url`` downloads from elsewhere (a mirror or a local
copy: ``file://`` URLs work too).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

__all__ = ["DEFAULT_URL", "ParamsDownloadError", "download_params", "main", "verify_archive"]

DEFAULT_URL = "https://storage.googleapis.com/alphafold/alphafold_params_2022-12-06.tar"
_CHUNK = 1 << 20
_MEMBER_RE = re.compile(r"^(?:\./)?([A-Za-z0-9_.-]+)$")
_PARAMS_RE = re.compile(r"^params_model_\d.*\.npz$")


class ParamsDownloadError(RuntimeError):
    """The download or its verification failed (DIR was left untouched)."""


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GB"


def _stream(url: str, dest: Path, *, progress: bool, timeout: float) -> tuple[int, int | None, str]:
    """Downloads ``url`` to ``dest``; returns (bytes received, Content-Length or None, sha256)."""
    request = urllib.request.Request(url, headers={"User-Agent": "jaxfold-params/1"})
    digest = hashlib.sha256()
    received = 0
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - user's URL
    except urllib.error.HTTPError as e:
        raise ParamsDownloadError(f"download failed: {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise ParamsDownloadError(f"download failed: {url}: {reason}") from None
    with response:
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        bar = None
        if progress:
            from tqdm import tqdm  # noqa: PLC0415

            bar = tqdm(
                total=expected,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=url.rsplit("/", 1)[-1][:40] or "download",
                file=sys.stderr,
                dynamic_ncols=True,
            )
        try:
            with open(dest, "wb") as out:
                while True:
                    try:
                        chunk = response.read(_CHUNK)
                    except (OSError, ValueError, http.client.HTTPException) as e:  # reset, cut, timeout
                        raise ParamsDownloadError(
                            f"download interrupted after {_human(received)}"
                            + (f" of {_human(expected)}" if expected else "")
                            + f": {e}"
                        ) from None
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
        finally:
            if bar is not None:
                bar.close()
    return received, expected, digest.hexdigest()


def verify_archive(path: Path) -> list[str]:
    """Checks the tar: plain files with safe names, at least one readable ``params_model_*.npz``.

    Returns the member names. Raises :class:`ParamsDownloadError` naming the problem.
    """
    try:
        with tarfile.open(path, "r:*") as tar:
            members = tar.getmembers()
            names = []
            for member in members:
                if member.isdir():
                    continue
                match = _MEMBER_RE.match(member.name)
                if not member.isfile() or match is None:
                    raise ParamsDownloadError(
                        f"archive member {member.name!r} is not a plain file at the top level: refusing to extract it"
                    )
                names.append(match.group(1))
            params = [n for n in names if _PARAMS_RE.match(n)]
            if not params:
                raise ParamsDownloadError(
                    "the archive holds no params_model_*.npz file: not an AlphaFold parameter archive"
                )
            for member in members:
                name = member.name[2:] if member.name.startswith("./") else member.name
                if not _PARAMS_RE.match(name):
                    continue
                f = tar.extractfile(member)
                if f is None:
                    raise ParamsDownloadError(f"cannot read {name} in the archive")
                with f:
                    try:
                        with zipfile.ZipFile(f) as z:
                            bad = z.testzip()
                    except (zipfile.BadZipFile, OSError, EOFError) as e:
                        raise ParamsDownloadError(f"{name} in the archive is not a readable .npz: {e}") from None
                    if bad is not None:
                        raise ParamsDownloadError(f"{name} in the archive is corrupt (bad CRC in {bad})")
    except tarfile.TarError as e:
        detail = str(e).splitlines()[0].rstrip(":") if str(e) else type(e).__name__
        raise ParamsDownloadError(
            f"the download is not a readable tar archive: corrupt or truncated ({detail})"
        ) from None
    except EOFError:
        raise ParamsDownloadError("the tar archive ends early: truncated download") from None
    return names


def _extract(path: Path, into: Path) -> None:
    with tarfile.open(path, "r:*") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, filter="data")
        else:  # pragma: no cover - Python < 3.11.4; members were checked by verify_archive
            tar.extractall(into)  # noqa: S202


def download_params(
    directory,
    *,
    url: str = DEFAULT_URL,
    sha256: str | None = None,
    size: int | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    force: bool = False,
) -> list[Path]:
    """Downloads, verifies and extracts the parameter archive into ``directory``.

    Returns the paths of the extracted files. Raises :class:`ParamsDownloadError` (``directory``
    untouched) when the download or the archive is bad. Without ``force``, a ``directory`` that
    already holds ``params_model_*.npz`` files is an error (nothing is downloaded).
    """
    directory = Path(directory).expanduser().absolute()
    if directory.exists() and not directory.is_dir():
        raise ParamsDownloadError(f"{directory} exists and is not a folder")
    if directory.is_dir() and not force:
        present = sorted(p.name for p in directory.glob("params_model_*.npz"))
        if present:
            raise ParamsDownloadError(
                f"{directory} already holds {len(present)} parameter file(s) "
                f"({present[0]}, ...): pass --force to download again"
            )
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ParamsDownloadError("--sha256 must be 64 hexadecimal digits")
    parent = directory.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ParamsDownloadError(f"cannot create {parent}: {e.strerror}") from None
    work = Path(tempfile.mkdtemp(prefix=f".{directory.name}.download-", dir=parent))
    try:
        archive = work / "params.tar"
        received, expected, digest = _stream(url, archive, progress=progress, timeout=timeout)
        if expected is not None and received != expected:
            raise ParamsDownloadError(
                f"download truncated: received {received} of {expected} bytes "
                f"({_human(received)} of {_human(expected)})"
            )
        if size is not None and received != size:
            raise ParamsDownloadError(f"download has {received} bytes, expected {size} (--size)")
        if received == 0:
            raise ParamsDownloadError(f"download is empty: {url}")
        if sha256 is not None and digest != sha256:
            raise ParamsDownloadError(f"SHA-256 mismatch: got {digest}, expected {sha256}")
        names = verify_archive(archive)
        staging = work / "extracted"
        staging.mkdir()
        _extract(archive, staging)
        archive.unlink()
        if not directory.exists():
            try:
                os.rename(staging, directory)  # one atomic step
            except OSError:  # created meanwhile by someone else: fall through to per-file moves
                pass
        if staging.exists():
            directory.mkdir(parents=True, exist_ok=True)
            for name in names:
                os.replace(staging / name, directory / name)
        return [directory / name for name in names]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jaxfold.params", description="DeepMind's official AlphaFold2 parameters."
    )
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser(
        "download",
        help="download, verify and extract the parameter archive",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("directory", help="folder to put params_model_*.npz in (created if needed)")
    d.add_argument("--url", default=DEFAULT_URL, help=f"archive URL (default {DEFAULT_URL})")
    d.add_argument("--sha256", help="expected SHA-256 of the archive (checked when given)")
    d.add_argument("--size", type=int, help="expected size in bytes (checked when given)")
    d.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds")
    d.add_argument("--force", action="store_true", help="download even if DIR has parameters")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "download":
        try:
            files = download_params(
                args.directory,
                url=args.url,
                sha256=args.sha256,
                size=args.size,
                progress=not args.no_progress,
                timeout=args.timeout,
                force=args.force,
            )
        except ParamsDownloadError as e:
            print(f"error: {e} ({args.directory} left unchanged)", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"\ninterrupted: {args.directory} left unchanged", file=sys.stderr)
            return 130
        params = sorted(f.name for f in files if _PARAMS_RE.match(f.name))
        print(f"{len(params)} parameter file(s) in {Path(args.directory)}: {', '.join(params)}")
        print(f"Use them with: python infer.py FASTA --params {args.directory}")
        return 0
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
