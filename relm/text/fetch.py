"""Getting raw corpora: copy a local file or download one (resumable, checksummed), unpack it, optionally sample lines.

"""
from __future__ import annotations

import gzip
import http.client
import lzma
import random
import shutil
import urllib.error
import urllib.request
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from relm.errors import InputError, eprint
from relm.files import CHUNK, atomic_output, count_lines, sha256_file


def _download(url: str, part: Path, retries: int, timeout: float, log: Callable) -> None:
    """Download `url` into `part`, resuming what is already there with an HTTP Range request."""
    for attempt in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                if have and resp.status != 206:  # server ignored the Range header: start over
                    log(f"fetch: {url} does not support resuming; restarting the download")
                    have = 0
                want, got = resp.headers.get("Content-Length"), 0
                with open(part, "ab" if have else "wb") as f:
                    while block := resp.read(CHUNK):
                        f.write(block)
                        got += len(block)
                if want is not None and got < int(want):  # http.client does not raise on a short body itself
                    raise http.client.IncompleteRead(b"", int(want) - got)
            return
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # nothing left to fetch: the .part is complete (checked by the caller)
                return
            raise InputError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            got = part.stat().st_size if part.exists() else 0
            if attempt == retries:
                raise InputError(
                    f"download of {url} interrupted after {got} bytes ({e!r}); the partial file {part} is kept, "
                    "run again to resume"
                ) from e
            log(f"fetch: {url} interrupted after {got} bytes ({e!r}); resuming (attempt {attempt + 2}/{retries + 1})")


def _payload_format(name: str) -> str:
    for fmt in ("gz", "xz", "zip"):
        if name.endswith("." + fmt):
            return fmt
    return "plain"


@contextmanager
def _open_unpacked(path: Path, fmt: str, member: str | None, name: str) -> Iterator:
    """Binary file object of the payload (format gz, xz, zip or plain)."""
    if fmt == "gz":
        f = gzip.open(path, "rb")
    elif fmt == "xz":
        f = lzma.open(path, "rb")
    elif fmt == "zip":
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
            if member is None:
                if len(names) != 1:
                    raise InputError(f"{name} holds {len(names)} files; name one with 'member' ({names[:10]})")
                member = names[0]
            if member not in names:
                raise InputError(f"{name} has no member {member!r} (it has {names[:10]})")
            with zf.open(member) as f:
                yield f
        return
    elif fmt == "plain":
        f = open(path, "rb")
    else:
        raise InputError(f"unknown format {fmt!r} for {name} (gz, xz, zip or plain)")
    with f:
        yield f


def fetch(
    source: dict,
    out: str | Path,
    lines: int | None = None,
    seed: int = 0,
    retries: int = 3,
    timeout: float = 60.0,
    log: Callable = eprint,
) -> Path:
    """Materialize `source` as the plain file `out` (written atomically).

    source: {"path": p} (a local file) or {"url": u, "sha256": h} (downloaded to `{out}.part`, resumed on re-runs,
    checked against h before anything else happens); optional "sha256" for local files too, "member" for .zip, and
    "format" (gz, xz, zip, plain) where the name does not tell (default: from the file name's ending).
    lines: keep a deterministic sample of this many lines (seeded, original order kept).
    """
    out = Path(out)
    if "url" in source:
        url, want = source["url"], source.get("sha256")
        if not want:
            raise InputError(f"source {url} needs a 'sha256' checksum")
        part = out.with_name(out.name + ".part")
        out.parent.mkdir(parents=True, exist_ok=True)
        if part.exists():
            log(f"fetch: resuming {url} from {part.stat().st_size} bytes")
        _download(url, part, retries, timeout, log)
        got = sha256_file(part)
        if got != want.lower():
            part.unlink()
            raise InputError(f"checksum mismatch for {url}: expected sha256 {want}, got {got}; download removed")
        payload, name = part, url.split("?")[0]
    elif "path" in source:
        payload = Path(source["path"])
        name = str(payload)
        if not payload.is_file():
            raise InputError(f"source file {payload} does not exist")
        want = source.get("sha256")
        if want and (got := sha256_file(payload)) != want.lower():
            raise InputError(f"checksum mismatch for {payload}: expected sha256 {want}, got {got}")
        part = None
    else:
        raise InputError(f"source needs 'path' or 'url' (got keys {sorted(source)})")

    fmt = source.get("format") or _payload_format(name)
    if lines is None:
        with _open_unpacked(payload, fmt, source.get("member"), name) as src, atomic_output(out, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
    else:  # unpack next to `out` first: sampling needs the line count, and `out` must never hold the full file
        full = out.with_name(f".{out.name}.unpacked")
        try:
            with _open_unpacked(payload, fmt, source.get("member"), name) as src, open(full, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
            _sample(full, out, lines, seed, name)
        finally:
            full.unlink(missing_ok=True)
    if part is not None:
        part.unlink()
    log(f"fetch: {name} -> {out} ({count_lines(out)} lines)")
    return out


def _sample(src_path: Path, out: Path, lines: int, seed: int, name: str) -> None:
    total = count_lines(src_path)
    if lines > total:
        raise InputError(f"asked for {lines} lines from {name}, but it has only {total}")
    keep = iter(sorted(random.Random(seed).sample(range(total), lines)))
    nxt = next(keep, None)
    with open(src_path, "rb") as src, atomic_output(out, "wb") as dst:
        for i, line in enumerate(src):
            if i == nxt:
                dst.write(line if line.endswith(b"\n") else line + b"\n")
                nxt = next(keep, None)
