"""Resumable, checksummed HTTP(S) downloads with urllib.

A download streams into ``<dest>.part``; a later call resumes it with a Range request (and starts
over if the server ignores Range). Only a complete file whose MD5 matches is renamed to ``dest``;
a complete file with the wrong MD5 is moved aside to ``<dest>.bad``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from wsss.errors import WsssError

CHUNK = 1 << 20
USER_AGENT = "wsss-prepare/0.1 (urllib)"


def file_digest(path: str | Path, algorithm: str, progress: bool = False) -> str:
    """Hex digest (``hashlib`` ``algorithm``: md5, sha256) of a file, read in chunks."""
    path = Path(path)
    digest = hashlib.new(algorithm)
    size = path.stat().st_size
    with open(path, "rb") as fh, tqdm(total=size, unit="B", unit_scale=True, desc=f"{algorithm} {path.name}",
                                      disable=not progress or size < 64 * CHUNK) as bar:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def md5sum(path: str | Path, progress: bool = False) -> str:
    """Hex MD5 of a file, read in chunks."""
    return file_digest(path, "md5", progress)


def sha256sum(path: str | Path, progress: bool = False) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    return file_digest(path, "sha256", progress)


def check_md5(path: Path, expected: str | None, progress: bool = False) -> str:
    """Raise a WsssError naming the file if its MD5 differs from ``expected``; return the actual sum."""
    actual = md5sum(path, progress)
    if expected is not None and actual.lower() != expected.lower():
        raise WsssError(f"{path}: MD5 mismatch: expected {expected}, got {actual}")
    return actual


def reachable(url: str, timeout: float = 5.0) -> str | None:
    """None if a TCP connection to the URL's host opens within ``timeout`` s, else the reason it failed.

    Name resolution runs in a helper thread so a hanging resolver cannot stretch the wait either.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"not an http(s) URL: {url}"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            with socket.create_connection((parts.hostname, port), timeout=timeout):
                outcome.append(None)
        except OSError as exc:
            outcome.append(f"{parts.hostname}:{port}: {exc}")

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return outcome[0] if outcome else f"{parts.hostname}:{port}: no answer within {timeout:g} s"


def _total_from_content_range(value: str | None) -> int | None:
    match = re.match(r"bytes\s+(?:\d+-\d+|\*)/(\d+)", value or "")
    return int(match.group(1)) if match else None


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _fetch_into(url: str, part: Path, progress: bool, timeout: float) -> None:
    """Bring ``part`` to the full content of ``url``, appending to what it already holds."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            total = _total_from_content_range(exc.headers.get("Content-Range"))
            if total == offset:
                return  # the partial file already holds everything
            part.unlink()
            return _fetch_into(url, part, progress, timeout)
        raise WsssError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
    with response:
        status = getattr(response, "status", 200)
        if offset and status == 206:
            start = re.match(r"bytes\s+(\d+)-", response.headers.get("Content-Range", ""))
            if not start or int(start.group(1)) != offset:
                raise WsssError(f"download of {url}: the server answered a different range than requested "
                                f"({response.headers.get('Content-Range')!r} for bytes={offset}-)")
            mode = "ab"
        else:
            offset, mode = 0, "wb"  # no Range support: start over
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with open(part, mode) as fh, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                          desc=part.name.removesuffix(".part"), disable=not progress) as bar:
            while True:
                block = response.read(CHUNK)
                if not block:
                    break
                fh.write(block)
                bar.update(len(block))
    if total is not None and part.stat().st_size != total:
        raise WsssError(f"download of {url} ended early: {part.stat().st_size} of {total} bytes "
                        f"(kept in {part}; run again to resume)")


def download(url: str, dest: str | Path, md5: str | None, *, progress: bool = True, timeout: float = 30) -> Path:
    """Download ``url`` to ``dest`` (resuming ``<dest>.part``), check ``md5`` and return ``dest``.

    An existing ``dest`` is kept if its MD5 matches (or no MD5 is given). With a wrong MD5 the
    downloaded file is moved to ``<dest>.bad`` and a WsssError names the file and both sums.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    bad = dest.with_name(dest.name + ".bad")
    if dest.exists():
        if md5 is None or md5sum(dest, progress).lower() == md5.lower():
            return dest
        os.replace(dest, bad)
    try:
        _fetch_into(url, part, progress, timeout)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WsssError(f"download of {url} failed: {reason} "
                        f"(partial data kept in {part}; run again to resume)") from None
    actual = md5sum(part, progress)
    if md5 is not None and actual.lower() != md5.lower():
        os.replace(part, bad)
        raise WsssError(f"{dest.name}: MD5 mismatch after downloading {url}: expected {md5}, got {actual}; "
                        f"the file was moved aside to {bad}")
    os.replace(part, dest)
    return dest
