"""Getting raw corpora: copy a local file or download one (resumable, retried, checksummed), unpack it, optionally
sample lines.

Downloads go to `{out}.part` and are resumed with HTTP Range requests across retries and reruns. 5xx and 429 answers,
connection resets and timeouts are retried with exponential back-off and jitter (a Retry-After header is honoured).
A body that ends early is resumed from where it stopped, also when the server sent no Content-Length (the sha256
tells whether the file is complete). Compressed files and archives (.gz, .xz, .bz2, .zip, .tar, .tar.gz/.tgz,
.tar.xz, .tar.bz2) are unpacked as a stream; tar and zip members that are links or paths outside the archive are
refused. A damaged archive is an error naming the source, and its download is removed so that a rerun fetches it
anew. Content that is still compressed or an archive after unpacking (a name that does not say what the file is) is
an error too, unless the source sets its "format".

The output is normalized text: LF line ends (CRLF and bare CR become LF) and a final newline. A source without any
text is an error; nothing is written then. A source may list several URLs (`urls`): they are concatenated in order;
`drop_blank` drops empty lines (CC-100 separates documents by them) and `dedup` keeps the first of repeated lines,
both before sampling. A URL without a sha256 in the config is checked against the lock file (data.lock), or recorded
there on its first download: a file that changes upstream is then an error, never a silent change. `mirrors`
rewrite URL prefixes (a local copy); `token_env` names the environment variable of a bearer token (gated hubs).

Train corpora are cleaned of the lines of the valid/test sets (remove_eval_lines, `relm clean`).

Sampling (`lines`): line i of the source gets the key splitmix64(mix(seed) + i * golden) and the `lines` lines with
the smallest keys are kept, in their original order. The keys are distinct, so the sample is exactly `lines` lines,
and it is a pure function of (seed, number of lines, lines): the two sides of a line-aligned parallel set, sampled
separately with the same seed, keep the same line numbers. It needs two passes over the text and memory for one
block of keys, never for the corpus.
"""
from __future__ import annotations

import bz2
import email.utils
import fcntl
import hashlib
import gzip
import http.client
import io
import itertools
import lzma
import os
import random
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from contextlib import ExitStack, contextmanager
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

import numpy as np

from relm.errors import InputError, eprint
from relm.files import CHUNK, atomic_output, atomic_write_text, sha256_file

FORMATS = ("plain", "gz", "xz", "bz2", "zip", "tar", "tar.gz", "tar.xz", "tar.bz2")
ARCHIVES = ("zip", "tar", "tar.gz", "tar.xz", "tar.bz2")
_ENDINGS = ((".tar.gz", "tar.gz"), (".tgz", "tar.gz"), (".tar.xz", "tar.xz"), (".txz", "tar.xz"),
            (".tar.bz2", "tar.bz2"), (".tbz2", "tar.bz2"), (".tar", "tar"), (".gz", "gz"), (".xz", "xz"),
            (".bz2", "bz2"), (".zip", "zip"))
# Content that is not text: what a plain file or an unpacked payload must not start with.
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"\xfd7zXZ\x00", "xz"), (b"PK\x03\x04", "zip"), (b"\x28\xb5\x2f\xfd", "zstd"),
          (b"7z\xbc\xaf\x27\x1c", "7z"), (b"Rar!\x1a\x07", "rar"))
MAX_RETRY_AFTER = 600.0  # seconds; a server asking for a longer pause is reported instead of waited for
MAX_DELAY = 120.0  # cap of the exponential back-off, seconds
READ_SIZE = 1 << 16
PROGRESS_BYTES = 64 << 20  # log progress of downloads of at least this size (every 10%), or this often without a size
SAMPLE_BLOCK = 1 << 20  # line keys computed per numpy block when sampling

# What a damaged gz / xz / zip / tar stream raises while it is read.
_CORRUPT = (EOFError, OSError, zlib.error, lzma.LZMAError, zipfile.BadZipFile, tarfile.TarError)


class _Retry(Exception):
    """One failed attempt worth retrying; `wait` is the server's Retry-After in seconds, if any."""

    def __init__(self, reason: str, wait: float | None = None, sleep: bool = True):
        super().__init__(reason)
        self.wait, self.sleep = wait, sleep


class _Corrupt(Exception):
    """The payload cannot be unpacked (truncated, corrupt, not the format its name says)."""


# --- downloading --------------------------------------------------------------------------------------------------

def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, complete length) of a Content-Range header; None where absent or unreadable."""
    if not value:
        return None, None
    unit, _, spec = value.strip().partition(" ")
    rng, _, total = spec.partition("/")
    first = rng.split("-")[0].strip() if rng.strip() != "*" else ""
    return (int(first) if unit == "bytes" and first.isdigit() else None,
            int(total) if unit == "bytes" and total.strip().isdigit() else None)


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def _copy_body(resp, part: Path, mode: str, start: int, total: int | None, url: str, log: Callable,
               progress_bytes: int) -> int:
    """Append (mode "ab") or write (mode "wb") the response body to `part`; log progress of long downloads."""
    if total is not None:
        step = max(1, total // 10) if total >= progress_bytes else None
    else:
        step = progress_bytes
    got, t0 = 0, time.monotonic()
    next_log = (start // step + 1) * step if step else None
    with open(part, mode) as f:
        while block := resp.read(READ_SIZE):
            f.write(block)
            got += len(block)
            if next_log is not None and start + got >= next_log:
                rate = got / max(time.monotonic() - t0, 1e-6)
                done = f"{_mb(start + got)} of {_mb(total)} ({100 * (start + got) // total}%)" if total else \
                    _mb(start + got)
                log(f"fetch: {url}: {done}, {_mb(rate)}/s")
                next_log = ((start + got) // step + 1) * step
    return got


def _attempt(url: str, part: Path, want: str | None, timeout: float, log: Callable, progress_bytes: int,
             headers: dict | None = None) -> bool:
    """One request. True: `part` is complete as far as the server says (the caller checks the sha256).
    Raises _Retry for failures worth another attempt and InputError for the others."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    for key, value in (headers or {}).items():  # not sent on to where a redirect points (a token stays with its host)
        req.add_unredirected_header(key, value)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            mode, start = ("ab", have) if have else ("wb", 0)
            first, total = _content_range(resp.headers.get("Content-Range"))
            if have and resp.status == 206 and first != have:
                if first != 0:  # not the range asked for, and not the whole file either
                    part.unlink()
                    raise _Retry(f"the server answered the range from {have} with Content-Range "
                                 f"{resp.headers.get('Content-Range')!r}; restarting from zero", sleep=False)
                log(f"fetch: {url} sent the file from byte 0 instead of {have}; restarting from zero")
                mode, start = "wb", 0
            elif have and resp.status != 206:
                log(f"fetch: {url} does not support resuming; restarting the download")
                mode, start, total = "wb", 0, None
            length = resp.headers.get("Content-Length")
            if total is None and length is not None and length.strip().isdigit():
                total = start + int(length)
            got = _copy_body(resp, part, mode, start, total, url, log, progress_bytes)
            if total is not None:
                if start + got < total:  # http.client does not raise on a short body itself
                    raise http.client.IncompleteRead(b"", total - start - got)
                return True
            if got == 0 or want is None or sha256_file(part) == want:
                return True
            # No length: a body cut short looks like a complete one. The checksum says it is not: ask for the rest.
            raise _Retry(f"the body ended after {start + got} bytes (no Content-Length) and does not match the "
                         "sha256 yet")
    except urllib.error.HTTPError as e:
        code, reason, headers = e.code, e.reason, e.headers
        e.close()
        if code == 416 and have:  # nothing left to fetch
            total = _content_range(headers.get("Content-Range"))[1]
            if total is not None and total != have:  # the .part is larger than the file: it is not ours
                part.unlink()
                raise _Retry(f"the partial file has {have} bytes, the file only {total}; restarting", sleep=False)
            return True
        if code == 429 or 500 <= code < 600:
            raise _Retry(f"HTTP {code} {reason}", wait=_retry_after(headers.get("Retry-After"))) from None
        raise InputError(f"download of {url} failed: HTTP {code} {reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:  # resets, timeouts, short bodies
        raise _Retry(repr(e.reason if isinstance(e, urllib.error.URLError) else e)) from None


def _download(url: str, part: Path, want: str | None, retries: int, timeout: float, retry_delay: float, log: Callable,
              progress_bytes: int = PROGRESS_BYTES, headers: dict | None = None, name: str | None = None) -> None:
    """Download `url` into `part` until it matches sha256 `want` (None: until the server's length is reached; the
    caller checks the lock), resuming what is already there. `name` is the URL as the config has it (mirrors)."""
    name = name or url
    jitter = random.Random()
    for attempt in range(retries + 1):
        try:
            if _attempt(url, part, want, timeout, log, progress_bytes, headers):
                break
        except _Retry as e:
            got = part.stat().st_size if part.exists() else 0
            if attempt == retries:
                kept = f"the partial file {part} is kept, run again to resume" if got else "run again to retry"
                raise InputError(f"download of {url} interrupted after {got} bytes ({e}; {retries + 1} attempt(s)); "
                                 f"{kept}") from None
            if e.wait is not None and e.wait > MAX_RETRY_AFTER:
                raise InputError(f"download of {url} failed ({e}) and the server asks to retry after {e.wait:.0f} s; "
                                 "run again later") from None
            delay = 0.0
            if e.sleep:
                delay = min(MAX_DELAY, retry_delay * 2**attempt) * jitter.uniform(0.5, 1.5)
                if e.wait is not None:
                    delay = e.wait
            log(f"fetch: {url}: {e} after {got} bytes; retrying in {delay:.3g} s (attempt {attempt + 2}/{retries + 1})")
            time.sleep(delay)
    if want is not None and (got := sha256_file(part)) != want:
        part.unlink()
        raise InputError(f"checksum mismatch for {name}: expected sha256 {want}, got {got}; download removed")


# --- unpacking ----------------------------------------------------------------------------------------------------

def _payload_format(name: str) -> str:
    low = name.lower()
    return next((fmt for ending, fmt in _ENDINGS if low.endswith(ending)), "plain")


def _unsafe(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return p.is_absolute() or ".." in p.parts or (len(name) > 1 and name[1] == ":")


def _pick(names: list[str], member: str | None, name: str) -> str:
    if member is None:
        if len(names) != 1:
            raise InputError(f"{name} holds {len(names)} files; name one with 'member' ({names[:10]})")
        return names[0]
    if member not in names:
        raise InputError(f"{name} has no member {member!r} (it has {names[:10]})")
    return member


def _open_zip(stack: ExitStack, raw, member: str | None, name: str):
    zf = stack.enter_context(zipfile.ZipFile(raw))
    for info in zf.infolist():
        if _unsafe(info.filename) or (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise InputError(f"{name}: member {info.filename!r} is a link or a path outside the archive; refused")
    names = [n for n in zf.namelist() if not n.endswith("/")]
    return stack.enter_context(zf.open(_pick(names, member, name)))


def _open_tar(stack: ExitStack, raw, fmt: str, member: str | None, name: str):
    mode = {"tar": "r:", "tar.gz": "r:gz", "tar.xz": "r:xz", "tar.bz2": "r:bz2"}[fmt]
    tf = stack.enter_context(tarfile.open(fileobj=raw, mode=mode))
    members = tf.getmembers()
    for m in members:
        if _unsafe(m.name) or m.issym() or m.islnk():
            raise InputError(f"{name}: member {m.name!r} is a link or a path outside the archive; refused")
        if not (m.isfile() or m.isdir()):
            raise InputError(f"{name}: member {m.name!r} is not a regular file (device, fifo); refused")
    files = {m.name: m for m in members if m.isfile()}
    return stack.enter_context(tf.extractfile(files[_pick(list(files), member, name)]))


class _Text(io.RawIOBase):
    """Read-only stream over a payload: LF line ends (CRLF and bare CR become LF) and a final newline; errors of
    the decompressor become _Corrupt."""

    def __init__(self, f, compressed: bool):
        self.f, self.compressed = f, compressed
        self.buf, self.cr, self.last, self.eof = b"", False, b"\n", False

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        while not self.buf and not self.eof:
            try:
                block = self.f.read(CHUNK)
            except _CORRUPT as e:
                if not self.compressed:
                    raise
                raise _Corrupt(str(e) or type(e).__name__) from e
            if not block:
                self.eof = True
                self.buf = b"\n" if self.cr or self.last != b"\n" else b""  # the last line's end
                return
            if self.cr:
                block = b"\r" + block
            self.cr = block.endswith(b"\r")  # maybe half of a CRLF: decided with the next block
            if self.cr:
                block = block[:-1]
            if b"\r" in block:
                block = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if block:
                self.buf, self.last = block, block[-1:]

    def readinto(self, b) -> int:
        self._fill()
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n


def _sniff(head: bytes) -> str | None:
    """The kind of compressed or archive data that `head` (the first bytes of a stream) starts, if any."""
    kind = next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)
    if kind is None and head[:3] == b"BZh" and head[4:10] == b"1AY&SY":
        kind = "bzip2"
    if kind is None and head[257:262] == b"ustar":
        kind = "tar"
    return kind


@contextmanager
def _open_text(path: Path, fmt: str, member: str | None, name: str, sniff: bool = True) -> Iterator:
    """The payload's text as a binary stream of LF-terminated lines (see _Text). sniff: refuse content that is
    itself compressed or an archive (a name that does not tell what the file is)."""
    with ExitStack() as stack:
        raw = stack.enter_context(open(path, "rb"))
        try:
            if fmt == "gz":
                f = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
            elif fmt == "xz":
                f = stack.enter_context(lzma.LZMAFile(raw))
            elif fmt == "bz2":
                f = stack.enter_context(bz2.BZ2File(raw))
            elif fmt == "zip":
                f = _open_zip(stack, raw, member, name)
            elif fmt.startswith("tar"):
                f = _open_tar(stack, raw, fmt, member, name)
            else:
                f = raw
            kind = _sniff(f.peek(512)[:512]) if sniff else None
        except _CORRUPT as e:
            raise _Corrupt(str(e) or type(e).__name__) from e
        if kind:
            what = "the file" if fmt == "plain" else f"its {fmt} content"
            raise InputError(f"{name}: {what} is {kind} data, not text; name the source for what it is (e.g. "
                             ".tar.gz, .bz2) or set its 'format'")
        yield io.BufferedReader(_Text(f, compressed=fmt != "plain"), CHUNK)


# --- sampling -----------------------------------------------------------------------------------------------------

_GOLDEN, _M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijection of uint64 (distinct inputs, distinct keys)."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def line_keys(seed: int, start: int, stop: int) -> np.ndarray:
    """Sampling keys (uint64) of lines start..stop-1: splitmix64(mix(seed) + i * golden), all distinct."""
    base = _mix(np.array([seed & (2**64 - 1)], dtype=np.uint64))[0]
    with np.errstate(over="ignore"):
        return _mix(np.arange(start, stop, dtype=np.uint64) * _GOLDEN + base)


def sample_threshold(seed: int, total: int, n: int, block: int = SAMPLE_BLOCK) -> int:
    """The n-th smallest key among lines 0..total-1: the sample is the lines with key <= it (1 <= n <= total).

    Two passes over the keys, one block at a time: a histogram of the top 16 bits finds the bucket of the n-th key,
    then that bucket's keys (about total / 65536) are collected and partitioned.
    """
    counts = np.zeros(1 << 16, dtype=np.int64)
    for start in range(0, total, block):
        counts += np.bincount((line_keys(seed, start, min(total, start + block)) >> np.uint64(48)).astype(np.int64),
                              minlength=1 << 16)
    cum = np.cumsum(counts)
    bucket = int(np.searchsorted(cum, n))
    rank = n - (int(cum[bucket - 1]) if bucket else 0)  # 1-based rank of the n-th key inside its bucket
    cand = []
    for start in range(0, total, block):
        keys = line_keys(seed, start, min(total, start + block))
        cand.append(keys[(keys >> np.uint64(48)) == np.uint64(bucket)])
    return int(np.partition(np.concatenate(cand), rank - 1)[rank - 1])


def _keep_flags(seed: int, total: int, threshold: int, block: int = SAMPLE_BLOCK) -> Iterator[bool]:
    thr = np.uint64(threshold)
    for start in range(0, total, block):
        yield from (line_keys(seed, start, min(total, start + block)) <= thr).tolist()


def sample_indices(seed: int, total: int, n: int, block: int = SAMPLE_BLOCK) -> np.ndarray:
    """The sorted line numbers (int64) that `fetch(..., lines=n, seed=seed)` keeps of a source of `total` lines."""
    flags = np.fromiter(_keep_flags(seed, total, sample_threshold(seed, total, n, block), block), bool, total)
    return np.flatnonzero(flags)


# --- fetch --------------------------------------------------------------------------------------------------------

def fetch(
    source: dict,
    out: str | Path,
    lines: int | None = None,
    seed: int = 0,
    retries: int = 5,
    timeout: float = 60.0,
    retry_delay: float = 2.0,
    log: Callable = eprint,
    progress_bytes: int = PROGRESS_BYTES,
    lock: str | Path | None = None,
    mirrors: dict | None = None,
) -> Path:
    """Materialize `source` as the plain text file `out` (written atomically, LF line ends, final newline).

    source: {"path": p}, {"url": u[, "sha256": h]} or {"urls": [u or {"url", "sha256", "format", "member"}, ...]}
    (downloaded to `{out}.part[N]`, resumed on re-runs, checked before anything else happens, concatenated in
    order); optional "sha256" for local files too, "member" for .zip and tar archives, "format" (one of FORMATS)
    where the name does not tell (default: from the file name's ending; content that is compressed or an archive
    then is an error, while a "format" given is trusted); "drop_blank" (drop empty lines), "dedup" (keep the first
    of repeated lines: 8 bytes per line for its hash, ~24 during the sort), "token_env" (a bearer token for the
    downloads, read from that environment variable, never logged or written).
    lines: keep a deterministic sample of this many lines, after drop_blank and dedup (see the module docstring).
    lock: the lock file: a URL without a sha256 in `source` is checked against it, or recorded in it.
    mirrors: {URL prefix: replacement}: where to download from instead (checksums and lock keep the URL).
    retries, retry_delay: attempts after the first, and the back-off base in seconds (doubled per attempt).
    """
    out = Path(out)
    parts = source_parts(source)
    if lines is not None and lines < 1:
        raise InputError(f"source {parts[0]['name']}: asked for a sample of {lines} lines; it needs at least 1")
    headers = {}
    if source.get("token_env"):
        token = os.environ.get(source["token_env"])
        if not token:
            raise InputError(f"source {parts[0]['name']}: environment variable {source['token_env']} (token_env) "
                             "is not set")
        headers["Authorization"] = f"Bearer {token}"
    for i, part in enumerate(parts):
        _acquire(part, out.with_name(out.name + (".part" if len(parts) == 1 else f".part{i}")), lock, mirrors or {},
                 headers, retries, timeout, retry_delay, log, progress_bytes)

    name = parts[0]["name"] if len(parts) == 1 else f"{parts[0]['name']} (+{len(parts) - 1} more)"
    drop_blank, dedup = bool(source.get("drop_blank")), bool(source.get("dedup"))
    try:
        if lines is None and not drop_blank and not dedup:
            n, text = 0, False
            with atomic_output(out, "wb") as dst:
                for line_block in _chunks(parts, by_line=False):
                    dst.write(line_block)
                    n += line_block.count(b"\n")
                    text = text or bool(line_block.strip())
                if not text:
                    raise InputError(f"{name} has no text (no line with anything but whitespace); {out} not written")
        else:
            text = [False]

            def seen(stream):  # notes whether any line has text while a pass counts or hashes
                for line in stream:
                    text[0] = text[0] or bool(line.strip())
                    yield line

            keep = _first_occurrences(seen(_lines(parts, drop_blank))) if dedup else None
            total = int(keep.sum()) if keep is not None else sum(1 for _ in seen(_lines(parts, drop_blank)))
            if not text[0]:
                raise InputError(f"{name} has no text (no line with anything but whitespace); {out} not written")
            dropped = []
            if drop_blank:
                dropped.append("blank lines")
            if dedup:
                dropped.append(f"{len(keep) - total} repeated lines")
            if dropped:
                log(f"fetch: {name}: {total} lines after dropping {' and '.join(dropped)}")
            if lines is not None and lines > total:
                raise InputError(f"asked for {lines} lines from {name}, but it has only {total}")
            stream = _lines(parts, drop_blank)
            if keep is not None:
                stream = itertools.compress(stream, keep)
            if lines is not None:
                stream = itertools.compress(stream, _keep_flags(seed, total, sample_threshold(seed, total, lines)))
            n = 0  # (that some line has text was checked by the counting pass)
            with atomic_output(out, "wb") as dst:
                for line in stream:
                    dst.write(line)
                    n += 1
    except _Corrupt as e:
        part = e.args[1] if len(e.args) > 1 else parts[0]
        removed = ""
        if part.get("download") is not None:
            part["download"].unlink(missing_ok=True)
            removed = f"; the download {part['download']} was removed, run again to download it anew"
        raise InputError(f"{part['name']} cannot be unpacked as {part['format']} ({e.args[0]}){removed}") from None
    for part in parts:
        if part.get("download") is not None:
            part["download"].unlink()
    log(f"fetch: {name} -> {out} ({n} lines{f' sampled with seed {seed}' if lines else ''})")
    return out


def source_parts(source: dict) -> list[dict]:
    """The files a source concatenates: [{"name", "url" or "path", "sha256", "format", "member", "sniff"}]."""
    keys = ("url", "path", "sha256", "format", "member")
    if "urls" in source:
        if not source["urls"]:
            raise InputError("source has an empty 'urls' list")
        raw = [{"url": u} if isinstance(u, str) else dict(u) for u in source["urls"]]
    elif "url" in source or "path" in source:
        raw = [{k: source[k] for k in keys if k in source}]
    else:
        raise InputError(f"source needs 'path', 'url' or 'urls' (got keys {sorted(source)})")
    parts = []
    for p in raw:
        name = p.get("url") or str(p.get("path"))
        fmt = p.get("format") or _payload_format(name.split("?")[0])
        fmt = "tar.gz" if fmt == "tgz" else fmt
        if fmt not in FORMATS:
            raise InputError(f"unknown format {fmt!r} for {name} ({', '.join(FORMATS)})")
        if p.get("member") is not None and fmt not in ARCHIVES:
            raise InputError(f"source {name}: 'member' needs an archive (zip or tar), but the format is {fmt}")
        parts.append({**p, "name": name, "format": fmt, "sniff": "format" not in p,
                      "sha256": p["sha256"].lower() if p.get("sha256") else None})
    return parts


def _acquire(part: dict, download: Path, lock, mirrors: dict, headers: dict, retries: int, timeout: float,
             retry_delay: float, log: Callable, progress_bytes: int) -> None:
    """Download or check one part; sets part["payload"] (and part["download"] for downloads)."""
    name = part["name"]
    if "path" in part:
        payload = Path(part["path"])
        if not payload.is_file():
            raise InputError(f"source file {payload} does not exist")
        if part["sha256"] and (got := sha256_file(payload)) != part["sha256"]:
            raise InputError(f"checksum mismatch for {payload}: expected sha256 {part['sha256']}, got {got}")
        part["payload"] = payload
        return
    locked = read_lock(lock).get(name) if lock else None
    want = part["sha256"] or (locked[0] if locked else None)
    if not want and not lock:
        raise InputError(f"source {name} needs a 'sha256' checksum (or a lock file to record it in)")
    url = next((new + name[len(old):] for old, new in mirrors.items() if name.startswith(old)), name)
    download.parent.mkdir(parents=True, exist_ok=True)
    if download.exists():
        log(f"fetch: resuming {name} from {download.stat().st_size} bytes")
    if url != name:
        log(f"fetch: {name} from the mirror {url}")
    _download(url, download, part["sha256"], retries, timeout, retry_delay, log, progress_bytes, headers, name)
    got = sha256_file(download)
    if not part["sha256"]:
        if locked and got != locked[0]:
            download.unlink()
            raise InputError(f"{name} changed upstream: its sha256 is {got}, but {lock} recorded {locked[0]}; "
                             f"nothing was written. To accept the new file, delete its line from {lock} and run again")
        if not locked:
            record_lock(lock, name, got, download.stat().st_size)
            log(f"fetch: {name}: sha256 {got} recorded in {lock}")
    elif lock:
        record_lock(lock, name, got, download.stat().st_size)
    part["payload"], part["download"] = download, download


def _chunks(parts: list[dict], by_line: bool) -> Iterator[bytes]:
    """The parts' text, one after the other: LF-terminated lines (by_line) or blocks of whole lines or less.
    A damaged part raises _Corrupt(message, part)."""
    for part in parts:
        try:
            with _open_text(part["payload"], part["format"], part.get("member"), part["name"], part["sniff"]) as src:
                yield from (src if by_line else iter(lambda: src.read(CHUNK), b""))
        except _Corrupt as e:
            raise _Corrupt(e.args[0], part) from None


def _lines(parts: list[dict], drop_blank: bool) -> Iterator[bytes]:
    """The parts' lines (LF-terminated), one after the other; without blank ones if drop_blank."""
    return (line for line in _chunks(parts, by_line=True) if not drop_blank or line.strip())


def _first_occurrences(lines: Iterator[bytes]) -> np.ndarray:
    """Bool per line: True where the line (LF-normalized) was not seen before. A 64-bit BLAKE2b hash per line
    stands for the line (a false repeat needs a collision: about n^2 / 2^65)."""
    hashes = np.fromiter((int.from_bytes(hashlib.blake2b(line, digest_size=8).digest(), "little")
                          for line in lines), dtype=np.uint64)
    keep = np.zeros(len(hashes), dtype=bool)
    keep[np.unique(hashes, return_index=True)[1]] = True
    return keep


# --- the lock file ------------------------------------------------------------------------------------------------

LOCK_HEADER = ("# relm data lock: the sha256 of every file downloaded without a checksum in the config (relm fetch).\n"
               "# Commit it with your results; a file that changes upstream is then an error. Columns: sha256 bytes url\n")


def read_lock(path: str | Path | None) -> dict[str, tuple[str, int]]:
    """{url: (sha256, bytes)} of a lock file (empty when it does not exist)."""
    if path is None or not Path(path).exists():
        return {}
    entries = {}
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 3 or len(fields[0]) != 64 or not fields[1].isdigit():
            raise InputError(f"{path}, line {i}: not a lock entry 'sha256<TAB>bytes<TAB>url': {line[:120]!r}")
        entries[fields[2]] = (fields[0], int(fields[1]))
    return entries


def record_lock(path: str | Path, url: str, sha256: str, size: int) -> None:
    """Add or update the entry of `url` (parallel fetch jobs take turns through an flock)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".flock"), "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        entries = read_lock(path)
        if entries.get(url) == (sha256, size):
            return
        entries[url] = (sha256, size)
        atomic_write_text(path, LOCK_HEADER + "".join(f"{s}\t{n}\t{u}\n" for u, (s, n) in sorted(entries.items())))


def format_lock(path: str | Path, fmt: str = "tsv") -> str:
    """The lock for publication: its TSV, or a Markdown table."""
    entries = read_lock(path)
    if fmt == "tsv":
        return "".join(f"{s}\t{n}\t{u}\n" for u, (s, n) in sorted(entries.items()))
    rows = "".join(f"| {u} | {n:,} | `{s}` |\n" for u, (s, n) in sorted(entries.items()))
    return "| file | bytes | sha256 |\n|---|---:|---|\n" + rows


# --- cleaning -----------------------------------------------------------------------------------------------------

def remove_eval_lines(train: str | Path, exclude: list, out: str | Path, log: Callable = eprint) -> int:
    """Write `train` without the lines that occur in any of the `exclude` files (valid/test sets), compared with
    surrounding whitespace stripped; returns how many lines were removed. Memory: the excluded lines only."""
    banned = set()
    for path in exclude:
        with open(path, "rb") as f:
            banned.update(line.strip() for line in f)
    banned.discard(b"")
    removed = kept = 0
    with open(train, "rb") as src, atomic_output(out, "wb") as dst:
        for line in src:
            if line.strip() in banned:
                removed += 1
            else:
                dst.write(line)
                kept += 1
        if kept == 0:
            raise InputError(f"{train}: every line occurs in the valid/test sets; {out} not written")
    sets = ", ".join(map(str, exclude)) or "no valid/test set (none configured for this corpus)"
    log(f"clean: {train} -> {out}: {removed} lines that occur in {sets} removed, {kept} kept")
    return removed
