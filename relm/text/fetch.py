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
text is an error; nothing is written then.

Sampling (`lines`): line i of the source gets the key splitmix64(mix(seed) + i * golden) and the `lines` lines with
the smallest keys are kept, in their original order. The keys are distinct, so the sample is exactly `lines` lines,
and it is a pure function of (seed, number of lines, lines): the two sides of a line-aligned parallel set, sampled
separately with the same seed, keep the same line numbers. It needs two passes over the text and memory for one
block of keys, never for the corpus.
"""
from __future__ import annotations

import email.utils
import bz2
import gzip
import http.client
import io
import itertools
import lzma
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
from relm.files import CHUNK, atomic_output, sha256_file

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


def _attempt(url: str, part: Path, want: str, timeout: float, log: Callable, progress_bytes: int) -> bool:
    """One request. True: `part` is complete as far as the server says (the caller checks the sha256).
    Raises _Retry for failures worth another attempt and InputError for the others."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
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
            if got == 0 or sha256_file(part) == want:
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


def _download(url: str, part: Path, want: str, retries: int, timeout: float, retry_delay: float, log: Callable,
              progress_bytes: int = PROGRESS_BYTES) -> None:
    """Download `url` into `part` until it matches sha256 `want`, resuming what is already there."""
    jitter = random.Random()
    for attempt in range(retries + 1):
        try:
            if _attempt(url, part, want, timeout, log, progress_bytes):
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
    got = sha256_file(part)
    if got != want:
        part.unlink()
        raise InputError(f"checksum mismatch for {url}: expected sha256 {want}, got {got}; download removed")


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


def _scan(path: Path, fmt: str, member: str | None, name: str, sniff: bool) -> tuple[int, bool]:
    """(number of lines, whether any line has text) of the payload."""
    n, text = 0, False
    with _open_text(path, fmt, member, name, sniff) as src:
        while block := src.read(CHUNK):
            n += block.count(b"\n")
            text = text or bool(block.strip())
    return n, text


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
) -> Path:
    """Materialize `source` as the plain text file `out` (written atomically, LF line ends, final newline).

    source: {"path": p} (a local file) or {"url": u, "sha256": h} (downloaded to `{out}.part`, resumed on re-runs,
    checked against h before anything else happens); optional "sha256" for local files too, "member" for .zip and
    tar archives, and "format" (one of FORMATS) where the name does not tell (default: from the file name's ending;
    content that is compressed or an archive then is an error, while a "format" given is trusted).
    lines: keep a deterministic sample of this many lines (see the module docstring; original order kept).
    retries, retry_delay: attempts after the first, and the back-off base in seconds (doubled per attempt).
    """
    out = Path(out)
    if "url" in source:
        payload, name = None, source["url"]
        if not source.get("sha256"):
            raise InputError(f"source {name} needs a 'sha256' checksum")
    elif "path" in source:
        payload = Path(source["path"])
        name = str(payload)
    else:
        raise InputError(f"source needs 'path' or 'url' (got keys {sorted(source)})")
    fmt = source.get("format") or _payload_format(name.split("?")[0])
    sniff = "format" not in source  # a format given explicitly is trusted
    if fmt == "tgz":
        fmt = "tar.gz"
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r} for {name} ({', '.join(FORMATS)})")
    member = source.get("member")
    if member is not None and fmt not in ARCHIVES:
        raise InputError(f"source {name}: 'member' needs an archive (zip or tar), but the format is {fmt}")
    if lines is not None and lines < 1:
        raise InputError(f"source {name}: asked for a sample of {lines} lines; it needs at least 1")

    part = None
    if payload is None:
        want = source["sha256"].lower()
        part = out.with_name(out.name + ".part")
        out.parent.mkdir(parents=True, exist_ok=True)
        if part.exists():
            log(f"fetch: resuming {name} from {part.stat().st_size} bytes")
        _download(name, part, want, retries, timeout, retry_delay, log, progress_bytes)
        payload = part
    else:
        if not payload.is_file():
            raise InputError(f"source file {payload} does not exist")
        want = source.get("sha256")
        if want and (got := sha256_file(payload)) != want.lower():
            raise InputError(f"checksum mismatch for {payload}: expected sha256 {want}, got {got}")

    empty = f"{name} has no text (no line with anything but whitespace); {out} not written"
    try:
        if lines is None:
            n, text = 0, False
            with _open_text(payload, fmt, member, name, sniff) as src, atomic_output(out, "wb") as dst:
                while block := src.read(CHUNK):
                    dst.write(block)
                    n += block.count(b"\n")
                    text = text or bool(block.strip())
                if not text:
                    raise InputError(empty)
        else:
            total, text = _scan(payload, fmt, member, name, sniff)
            if not text:
                raise InputError(empty)
            if lines > total:
                raise InputError(f"asked for {lines} lines from {name}, but it has only {total}")
            threshold = sample_threshold(seed, total, lines)
            with _open_text(payload, fmt, member, name, sniff) as src, atomic_output(out, "wb") as dst:
                dst.writelines(itertools.compress(src, _keep_flags(seed, total, threshold)))
            n = lines
    except _Corrupt as e:
        removed = ""
        if part is not None:
            part.unlink(missing_ok=True)
            removed = f"; the download {part} was removed, run again to download it anew"
        raise InputError(f"{name} cannot be unpacked as {fmt} ({e}){removed}") from None
    if part is not None:
        part.unlink()
    log(f"fetch: {name} -> {out} ({n} lines{f' sampled with seed {seed}' if lines else ''})")
    return out
