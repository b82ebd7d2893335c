"""Downloads against a real HTTP server on 127.0.0.1 (Range support, cut transfers), unpacking, sampling, local files."""
import bz2
import gzip
import hashlib
import io
import json
import lzma
import re
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from relm.cli import main
from relm.errors import InputError
from relm.files import CHUNK, sha256_file
from relm.text.fetch import fetch, line_keys, sample_indices

TEXT = "".join(f"line {i} ünïcode\n" for i in range(3000)).encode()
quiet = lambda *a: None  # noqa: E731


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tarred(data: bytes, mode: str = "w", extra: tuple = ()) -> bytes:
    """A tar archive holding corpus/train.txt = data; `extra`: more TarInfo (links, ../ paths) with their bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as t:
        for info, payload in ((tarfile.TarInfo("corpus/train.txt"), data), *extra):
            info.size = len(payload)
            t.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def zipped(data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("corpus/train.txt", data)
    return buf.getvalue()


class Server:
    """Serves `files` over HTTP/1.0 on 127.0.0.1 and records (path, Range header) per request. Fault modes:
    cut[path] = k: the next k transfers promise everything, deliver a third and hang up;
    fail[path] = [503, 429, ...]: answer these statuses first (with Retry-After `retry_after[path]` if set);
    delay[path] = k: sleep `delay_s` before the next k answers;
    no_length: send no Content-Length (the body ends when the connection closes); total_star: Content-Range "/*";
    bad_range = "shifted" | "from_zero": answer a Range request with 206 for another range;
    ignore_range: answer Range requests with 200 and the whole file."""

    def __init__(self):
        self.files, self.requests, self.cut, self.ignore_range = {}, [], {}, False
        self.fail, self.retry_after, self.delay, self.delay_s = {}, {}, {}, 1.0
        self.no_length, self.total_star, self.bad_range = False, False, None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                if server.delay.get(self.path, 0) > 0:
                    server.delay[self.path] -= 1
                    time.sleep(server.delay_s)
                if server.fail.get(self.path):
                    code = server.fail[self.path].pop(0)
                    self.send_response(code)
                    if self.path in server.retry_after:
                        self.send_header("Retry-After", server.retry_after[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and not server.ignore_range:
                    start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
                    if start >= len(data):
                        self.send_error(416)
                        return
                    if server.bad_range == "shifted":
                        start = max(0, start - 5)
                    elif server.bad_range == "from_zero":
                        start = 0
                    self.send_response(206)
                    total = "*" if server.total_star else len(data)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{total}")
                else:
                    self.send_response(200)
                body = data[start:]
                if not server.no_length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut.get(self.path, 0) > 0:
                    server.cut[self.path] -= 1
                    body = body[: len(body) // 3]  # promise everything, deliver a third, hang up
                self.wfile.write(body)
                self.wfile.flush()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.mark.parametrize("name, pack", [
    ("data.txt", lambda b: b),
    ("data.txt.gz", gzip.compress),
    ("data.txt.xz", lzma.compress),
    ("data.zip", zipped),
    ("data.tar", tarred),
    ("data.tar.gz", lambda b: tarred(b, "w:gz")),
    ("data.tgz", lambda b: tarred(b, "w:gz")),
    ("data.tar.xz", lambda b: tarred(b, "w:xz")),
    ("data.txt.bz2", bz2.compress),
    ("data.tar.bz2", lambda b: tarred(b, "w:bz2")),
], ids=["plain", "gz", "xz", "zip", "tar", "tar.gz", "tgz", "tar.xz", "bz2", "tar.bz2"])
def test_download_and_unpack(server, tmp_path, name, pack):
    payload = pack(TEXT)
    server.files["/" + name] = payload
    out = tmp_path / "sub" / "raw.txt"
    fetch({"url": f"{server.url}/{name}", "sha256": sha(payload)}, out, log=quiet)
    assert out.read_bytes() == TEXT
    assert sorted(p.name for p in out.parent.iterdir()) == ["raw.txt"]  # no .part / temp files left
    assert server.requests == [("/" + name, None)]


def test_wrong_checksum_leaves_nothing(server, tmp_path):
    server.files["/data.txt"] = TEXT
    out = tmp_path / "raw.txt"
    wrong = "0" * 64
    with pytest.raises(InputError) as e:
        fetch({"url": f"{server.url}/data.txt", "sha256": wrong}, out, log=quiet)
    msg = str(e.value)
    assert f"{server.url}/data.txt" in msg and wrong in msg and sha(TEXT) in msg
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_resumes_with_range(server, tmp_path):
    server.files["/data.txt.gz"] = payload = gzip.compress(TEXT)
    server.cut["/data.txt.gz"] = 1
    out = tmp_path / "raw.txt"
    src = {"url": f"{server.url}/data.txt.gz", "sha256": sha(payload)}
    with pytest.raises(InputError, match="interrupted after .* run again to resume"):
        fetch(src, out, retries=0, log=quiet)
    part = tmp_path / "raw.txt.part"
    assert not out.exists() and part.stat().st_size == len(payload) // 3
    fetch(src, out, retries=0, log=quiet)
    assert server.requests == [("/data.txt.gz", None), ("/data.txt.gz", f"bytes={len(payload) // 3}-")]
    assert sha256_file(out) == sha(TEXT) and not part.exists()


def test_retry_within_one_call(server, tmp_path):
    server.files["/data.txt"] = TEXT
    server.cut["/data.txt"] = 2
    out = tmp_path / "raw.txt"
    fetch({"url": f"{server.url}/data.txt", "sha256": sha(TEXT)}, out, retries=2, retry_delay=0.001, log=quiet)
    assert out.read_bytes() == TEXT
    third = len(TEXT) // 3
    assert [r for _, r in server.requests] == [None, f"bytes={third}-", f"bytes={third + (len(TEXT) - third) // 3}-"]


def test_server_ignoring_range_restarts(server, tmp_path):
    server.files["/data.txt"] = TEXT
    server.ignore_range = True
    out = tmp_path / "raw.txt"
    (tmp_path / "raw.txt.part").write_bytes(b"garbage that must not stay")
    fetch({"url": f"{server.url}/data.txt", "sha256": sha(TEXT)}, out, log=quiet)
    assert out.read_bytes() == TEXT
    assert server.requests == [("/data.txt", "bytes=26-")]


def test_complete_part_is_reused(server, tmp_path):
    server.files["/data.txt"] = TEXT
    (tmp_path / "raw.txt.part").write_bytes(TEXT)  # a finished download whose run died before unpacking
    fetch({"url": f"{server.url}/data.txt", "sha256": sha(TEXT)}, tmp_path / "raw.txt", log=quiet)
    assert (tmp_path / "raw.txt").read_bytes() == TEXT
    assert server.requests == [("/data.txt", f"bytes={len(TEXT)}-")]  # answered 416: nothing left


def test_http_error(server, tmp_path):
    with pytest.raises(InputError, match="HTTP 404"):
        fetch({"url": f"{server.url}/nope.txt", "sha256": "0" * 64}, tmp_path / "raw.txt", log=quiet)
    assert list(tmp_path.iterdir()) == []
    assert len(server.requests) == 1  # a 404 is not retried


def test_sampling(tmp_path):
    src = tmp_path / "src.txt"
    src.write_bytes(TEXT)
    lines = TEXT.decode().splitlines()

    def sample(seed, n=100, name="s.txt"):
        fetch({"path": str(src)}, tmp_path / name, lines=n, seed=seed, log=quiet)
        return (tmp_path / name).read_text().splitlines()

    a, b, c = sample(0), sample(0, name="t.txt"), sample(1)
    assert a == b != c and len(a) == len(c) == 100
    pos = [lines.index(x) for x in a]
    assert pos == sorted(pos) and len(set(pos)) == 100  # original order, no repeats
    assert sample(5, n=3000) == lines
    with pytest.raises(InputError, match="asked for 3001 lines from .*src.txt, but it has only 3000"):
        sample(0, n=3001, name="u.txt")
    assert not (tmp_path / "u.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.txt", "src.txt", "t.txt"]


def test_local_sources(tmp_path):
    (tmp_path / "c.gz").write_bytes(gzip.compress(TEXT))
    fetch({"path": str(tmp_path / "c.gz"), "sha256": sha(gzip.compress(TEXT))}, tmp_path / "out.txt", log=quiet)
    assert (tmp_path / "out.txt").read_bytes() == TEXT
    with pytest.raises(InputError, match=re.escape(f"source file {tmp_path / 'missing.txt'} does not exist")):
        fetch({"path": str(tmp_path / "missing.txt")}, tmp_path / "out2.txt", log=quiet)
    with pytest.raises(InputError, match="checksum mismatch"):
        fetch({"path": str(tmp_path / "c.gz"), "sha256": "1" * 64}, tmp_path / "out3.txt", log=quiet)
    (tmp_path / "two.zip").write_bytes(zipped(TEXT))
    with zipfile.ZipFile(tmp_path / "two.zip", "a") as z:
        z.writestr("other.txt", "x\n")
    with pytest.raises(InputError, match="holds 2 files"):
        fetch({"path": str(tmp_path / "two.zip")}, tmp_path / "out4.txt", log=quiet)
    fetch({"path": str(tmp_path / "two.zip"), "member": "other.txt"}, tmp_path / "out4.txt", log=quiet)
    assert (tmp_path / "out4.txt").read_text() == "x\n"
    assert not list(tmp_path.glob("out[23].txt"))


# --- sampling: a pure function of (seed, number of lines, lines) --------------------------------------------------

def test_sampling_keeps_parallel_pairs_aligned(tmp_path):
    """The two sides of a parallel set, sampled separately (one even compressed), keep the same line numbers."""
    n = 500
    (tmp_path / "v.en").write_text("".join(f"en sentence {i}\n" for i in range(n)))
    (tmp_path / "v.mk.gz").write_bytes(gzip.compress("".join(f"мк реченица {i} ü\n" for i in range(n)).encode()))
    for seed, k in ((0, 50), (7, 50), (3, 499)):
        fetch({"path": str(tmp_path / "v.en")}, tmp_path / "s.en", lines=k, seed=seed, log=quiet)
        fetch({"path": str(tmp_path / "v.mk.gz")}, tmp_path / "s.mk", lines=k, seed=seed, log=quiet)
        en = [int(line.split()[-1]) for line in (tmp_path / "s.en").read_text().splitlines()]
        mk = [int(line.split()[-2]) for line in (tmp_path / "s.mk").read_text().splitlines()]
        assert en == mk and len(en) == k == len(set(en)) and en == sorted(en)
        assert en == sample_indices(seed, n, k).tolist()


@pytest.mark.parametrize("total, n, block", [(1, 1, 4), (10, 3, 4), (1000, 999, 64), (3000, 50, 1000), (70000, 1, 7)])
def test_sample_indices_are_the_smallest_keys(total, n, block):
    """The two-pass bucket search finds exactly the n lines with the smallest keys, whatever the block size."""
    keys = line_keys(5, 0, total)
    assert len(set(keys.tolist())) == total  # distinct keys: exactly n lines, no ties
    assert sample_indices(5, total, n, block=block).tolist() == sorted(np.argsort(keys)[:n].tolist())
    assert line_keys(5, 3, min(total, 9)).tolist() == keys[3:9].tolist()  # a key depends on its line number only


def test_sample_is_uniform_and_nested():
    a, b = sample_indices(1, 30000, 3000), sample_indices(1, 30000, 6000)
    assert set(a.tolist()) <= set(b.tolist())  # a larger sample extends a smaller one
    per_decile = np.bincount(a // 3000, minlength=10)
    assert per_decile.min() > 240 and per_decile.max() < 360, per_decile  # ~300 each (sd ~16)
    assert not np.array_equal(sample_indices(2, 30000, 3000), a)


# --- text normalization and empty sources -------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    (b"a\rb\rc\n", b"a\nb\nc\n"),  # old-Mac line ends: three lines, not one
    (b"a\r\nb\r\n", b"a\nb\n"),
    (b"a\r\rb", b"a\n\nb\n"),  # an empty line between two bare CRs; a final newline added
    (b"x" * (CHUNK - 1) + b"\r\ny\r", b"x" * (CHUNK - 1) + b"\ny\n"),  # CRLF split across two read blocks
], ids=["cr", "crlf", "cr-cr", "crlf-across-blocks"])
def test_line_ends_normalized(tmp_path, raw, expected):
    (tmp_path / "in.txt.gz").write_bytes(gzip.compress(raw))
    fetch({"path": str(tmp_path / "in.txt.gz")}, tmp_path / "out.txt", log=quiet)
    assert (tmp_path / "out.txt").read_bytes() == expected


def test_bare_cr_lines_are_sampled_as_lines(tmp_path):
    (tmp_path / "mac.txt").write_bytes(b"".join(b"l%d\r" % i for i in range(100)))
    fetch({"path": str(tmp_path / "mac.txt")}, tmp_path / "s.txt", lines=10, seed=0, log=quiet)
    assert (tmp_path / "s.txt").read_text().splitlines() == [f"l{i}" for i in sample_indices(0, 100, 10)]


@pytest.mark.parametrize("name, data", [
    ("empty.txt", b""), ("blank.txt", b"\n \n\t\r\n"), ("empty.gz", gzip.compress(b"")),
    ("empty.zip", zipped(b"")),
], ids=["empty", "blank", "empty-gz", "empty-zip"])
@pytest.mark.parametrize("lines", [None, 1])
def test_empty_source_is_an_error(tmp_path, name, data, lines):
    (tmp_path / name).write_bytes(data)
    out = tmp_path / "out" / "raw.txt"
    with pytest.raises(InputError, match=rf"{re.escape(str(tmp_path / name))} has no text .*{re.escape(str(out))} "
                                         "not written"):
        fetch({"path": str(tmp_path / name)}, out, lines=lines, log=quiet)
    assert not out.exists() and not list(tmp_path.glob("out/*"))


def test_empty_download_is_an_error(server, tmp_path):
    server.files["/e.txt.gz"] = payload = gzip.compress(b"\n\n")
    with pytest.raises(InputError, match=rf"{server.url}/e\.txt\.gz has no text"):
        fetch({"url": f"{server.url}/e.txt.gz", "sha256": sha(payload)}, tmp_path / "raw.txt", log=quiet)
    assert not (tmp_path / "raw.txt").exists()


# --- downloads that survive real servers --------------------------------------------------------------------------

@pytest.mark.parametrize("codes", [[503], [500, 502, 503], [429]])
def test_server_errors_are_retried(server, tmp_path, codes):
    server.files["/data.txt"] = TEXT
    server.fail["/data.txt"] = list(codes)
    logged = []
    fetch({"url": f"{server.url}/data.txt", "sha256": sha(TEXT)}, tmp_path / "raw.txt", retry_delay=0.001,
          log=logged.append)
    assert (tmp_path / "raw.txt").read_bytes() == TEXT
    assert len(server.requests) == len(codes) + 1
    assert sum(f"HTTP {codes[0]}" in m and "retrying in" in m for m in logged) == 1


def test_retry_after_is_honoured(server, tmp_path):
    server.files["/data.txt"] = TEXT
    server.fail["/data.txt"], server.retry_after["/data.txt"] = [429], "1"
    t0 = time.monotonic()
    fetch({"url": f"{server.url}/data.txt", "sha256": sha(TEXT)}, tmp_path / "raw.txt", retry_delay=0.001,
          log=quiet)
    assert time.monotonic() - t0 >= 1.0  # the back-off alone would wait milliseconds
    assert (tmp_path / "raw.txt").read_bytes() == TEXT


def test_back_off_grows(server, tmp_path):
    server.files["/data.txt"] = TEXT
    server.fail["/data.txt"] = [503] * 4
    logged = []
    fetch({"url": f"{server.url}/data.txt", "sha256": sha(TEXT)}, tmp_path / "raw.txt", retry_delay=0.01,
          log=logged.append)
    delays = [float(re.search(r"retrying in ([\d.]+) s", m).group(1)) for m in logged if "retrying" in m]
    assert len(delays) == 4 and delays[-1] > delays[0]  # 0.01 * 2^k, jittered by at most x1.5 / x0.5


def test_server_errors_exhaust_retries(server, tmp_path):
    server.files["/data.txt"] = TEXT
    server.fail["/data.txt"] = [503] * 10
    with pytest.raises(InputError, match=rf"download of {server.url}/data\.txt interrupted .*HTTP 503.*3 attempt"):
        fetch({"url": f"{server.url}/data.txt", "sha256": sha(TEXT)}, tmp_path / "raw.txt", retries=2,
              retry_delay=0.001, log=quiet)
    assert len(server.requests) == 3 and list(tmp_path.iterdir()) == []


def test_timeout_is_retried(server, tmp_path):
    server.files["/data.txt"] = TEXT
    server.delay["/data.txt"], server.delay_s = 1, 1.0
    fetch({"url": f"{server.url}/data.txt", "sha256": sha(TEXT)}, tmp_path / "raw.txt", timeout=0.2,
          retry_delay=0.001, log=quiet)
    assert (tmp_path / "raw.txt").read_bytes() == TEXT and len(server.requests) == 2


@pytest.mark.parametrize("total_star", [False, True], ids=["total", "star"])
def test_short_body_without_content_length_is_resumed(server, tmp_path, total_star):
    server.files["/data.txt"] = TEXT
    server.cut["/data.txt"], server.no_length, server.total_star = 1, True, total_star
    fetch({"url": f"{server.url}/data.txt", "sha256": sha(TEXT)}, tmp_path / "raw.txt", retry_delay=0.001,
          log=quiet)
    assert (tmp_path / "raw.txt").read_bytes() == TEXT
    assert server.requests == [("/data.txt", None), ("/data.txt", f"bytes={len(TEXT) // 3}-")]


@pytest.mark.parametrize("bad_range, ranges", [
    ("shifted", [None, f"bytes={len(TEXT) // 3}-", None]),  # 206 for another offset: dropped, restarted
    ("from_zero", [None, f"bytes={len(TEXT) // 3}-"]),  # 206 from byte 0: that answer is the whole file
])
def test_wrong_content_range_restarts_from_zero(server, tmp_path, bad_range, ranges):
    server.files["/data.txt"] = TEXT
    server.cut["/data.txt"], server.bad_range = 1, bad_range
    fetch({"url": f"{server.url}/data.txt", "sha256": sha(TEXT)}, tmp_path / "raw.txt", retry_delay=0.001,
          log=quiet)
    assert (tmp_path / "raw.txt").read_bytes() == TEXT
    assert [r for _, r in server.requests] == ranges


def test_progress_lines(server, tmp_path):
    big = TEXT * 40  # ~1.9 MB
    server.files["/big.txt"] = big
    logged = []
    fetch({"url": f"{server.url}/big.txt", "sha256": sha(big)}, tmp_path / "raw.txt", progress_bytes=100_000,
          log=logged.append)
    progress = [m for m in logged if "MB/s" in m]
    assert 9 <= len(progress) <= 10 and all("%" in m and " of " in m for m in progress)
    assert progress[-1].split(": ")[-1].startswith(f"{len(big) / 1e6:.1f} MB of {len(big) / 1e6:.1f} MB (100%)")
    server.no_length, logged[:] = True, []  # no size known: a line every progress_bytes
    fetch({"url": f"{server.url}/big.txt", "sha256": sha(big)}, tmp_path / "raw2.txt", progress_bytes=500_000,
          log=logged.append)
    assert len([m for m in logged if "MB/s" in m]) == len(big) // 500_000
    logged[:] = []  # small downloads: no progress lines
    fetch({"url": f"{server.url}/big.txt", "sha256": sha(big)}, tmp_path / "raw3.txt", log=logged.append)
    assert not [m for m in logged if "MB/s" in m] and len(logged) == 1


# --- damaged and unsafe archives ----------------------------------------------------------------------------------

GZ = gzip.compress(TEXT)
ZIP = zipped(TEXT)
CORRUPT = {
    "truncated.gz": GZ[: len(GZ) // 2],
    "corrupt.zip": ZIP[:100] + bytes(b ^ 0xFF for b in ZIP[100:200]) + ZIP[200:],
    "cut.zip": ZIP[: len(ZIP) // 2],
    "fake.xz": TEXT,
    "fake.gz": TEXT,
    "truncated.tar.gz": tarred(TEXT, "w:gz")[:500],
    "fake.tar": TEXT,
}


@pytest.mark.parametrize("name", list(CORRUPT))
def test_damaged_download_is_removed(server, tmp_path, name):
    server.files["/" + name] = payload = CORRUPT[name]
    src, out = {"url": f"{server.url}/{name}", "sha256": sha(payload)}, tmp_path / "raw.txt"
    for _ in range(2):  # the rerun downloads again instead of failing on the kept file
        with pytest.raises(InputError, match=rf"^{server.url}/{re.escape(name)} cannot be unpacked as .*; the "
                                             r"download .*raw\.txt\.part was removed, run again"):
            fetch(src, out, log=quiet)
        assert list(tmp_path.iterdir()) == []
    assert server.requests == [("/" + name, None)] * 2


def test_damaged_local_archive_is_kept(tmp_path):
    (tmp_path / "t.gz").write_bytes(CORRUPT["truncated.gz"])
    with pytest.raises(InputError, match=r"t\.gz cannot be unpacked as gz \(Compressed file ended"):
        fetch({"path": str(tmp_path / "t.gz")}, tmp_path / "out.txt", log=quiet)
    assert [p.name for p in tmp_path.iterdir()] == ["t.gz"]


def _info(name, kind=tarfile.REGTYPE, target=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize("extra", [
    (_info("../evil.txt"), b"x\n"),
    (_info("corpus/../../evil.txt"), b"x\n"),
    (_info("/etc/evil.txt"), b"x\n"),
    (_info("corpus/link", tarfile.SYMTYPE, "/etc/passwd"), b""),
    (_info("corpus/hard", tarfile.LNKTYPE, "corpus/train.txt"), b""),
    (_info("corpus/fifo", tarfile.FIFOTYPE), b""),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "fifo"])
def test_unsafe_tar_is_refused(server, tmp_path, extra):
    server.files["/c.tar.gz"] = payload = tarred(TEXT, "w:gz", (extra,))
    with pytest.raises(InputError, match=rf"c\.tar\.gz: member {re.escape(repr(extra[0].name))} .*refused"):
        fetch({"url": f"{server.url}/c.tar.gz", "sha256": sha(payload), "member": "corpus/train.txt"},
              tmp_path / "raw.txt", log=quiet)
    assert not (tmp_path / "raw.txt").exists()


def test_unsafe_zip_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "c.zip", "w") as z:
        z.writestr("corpus/train.txt", TEXT)
        z.writestr("../evil.txt", b"x\n")
    with pytest.raises(InputError, match=r"member '\.\./evil\.txt' is a link or a path outside the archive"):
        fetch({"path": str(tmp_path / "c.zip"), "member": "corpus/train.txt"}, tmp_path / "out.txt", log=quiet)


def test_tar_member_selection(tmp_path):
    (tmp_path / "two.tgz").write_bytes(tarred(TEXT, "w:gz", ((_info("corpus/valid.txt"), b"v\n"),
                                                             (_info("corpus/", tarfile.DIRTYPE), b""))))
    with pytest.raises(InputError, match=r"two\.tgz holds 2 files; name one with 'member'"):
        fetch({"path": str(tmp_path / "two.tgz")}, tmp_path / "out.txt", log=quiet)
    with pytest.raises(InputError, match=r"two\.tgz has no member 'nope'"):
        fetch({"path": str(tmp_path / "two.tgz"), "member": "nope"}, tmp_path / "out.txt", log=quiet)
    fetch({"path": str(tmp_path / "two.tgz"), "member": "corpus/valid.txt"}, tmp_path / "out.txt", log=quiet)
    assert (tmp_path / "out.txt").read_bytes() == b"v\n"
    fetch({"path": str(tmp_path / "two.tgz"), "member": "corpus/train.txt"}, tmp_path / "s.txt", lines=5, log=quiet)
    assert len((tmp_path / "s.txt").read_text().splitlines()) == 5


@pytest.mark.parametrize("source, lines, match", [
    ({"path": "x.txt", "format": "rar"}, None, r"unknown format 'rar' for x\.txt"),
    ({"path": "x.txt", "member": "a"}, None, r"source x\.txt: 'member' needs an archive"),
    ({"path": "x.txt"}, 0, r"source x\.txt: asked for a sample of 0 lines"),
    ({"url": "http://127.0.0.1:9/x.txt"}, None, r"source http://127\.0\.0\.1:9/x\.txt needs a 'sha256'"),
])
def test_bad_source_fails_before_any_work(tmp_path, source, lines, match):
    with pytest.raises(InputError, match=match):
        fetch(source, tmp_path / "out.txt", lines=lines, log=quiet)


@pytest.mark.parametrize("name, data, match", [
    ("c.txt", gzip.compress(TEXT), r"c\.txt: the file is gzip data, not text"),
    ("c.txt", tarred(TEXT), r"c\.txt: the file is tar data"),
    ("c.gz", gzip.compress(tarred(TEXT)), r"c\.gz: its gz content is tar data"),  # a .tar.gz named .gz
    ("c.zip", zipped(bz2.compress(TEXT)), r"c\.zip: its zip content is bzip2 data"),
    ("c.txt", b"\x28\xb5\x2f\xfd" + TEXT, r"c\.txt: the file is zstd data"),
], ids=["gz-as-txt", "tar-as-txt", "tar.gz-as-gz", "bz2-in-zip", "zstd-as-txt"])
def test_content_that_is_not_text_is_refused(tmp_path, name, data, match):
    """Today's failure mode: an archive copied into the corpus with its headers. Now an error, unless the source
    says what the file is."""
    (tmp_path / name).write_bytes(data)
    with pytest.raises(InputError, match=match + r".*set its 'format'"):
        fetch({"path": str(tmp_path / name)}, tmp_path / "out.txt", log=quiet)
    assert not (tmp_path / "out.txt").exists()
    fetch({"path": str(tmp_path / name), "format": "plain"}, tmp_path / "out.txt", log=quiet)  # trusted
    assert (tmp_path / "out.txt").exists()


def test_fetch_cli(server, tmp_path):
    server.files["/data.txt"] = TEXT
    server.fail["/data.txt"] = [503]
    out = tmp_path / "raw.txt"
    main(["fetch", "--source", json.dumps({"url": f"{server.url}/data.txt", "sha256": sha(TEXT)}), "--out", str(out),
          "--lines", "10", "--seed", "4", "--retries", "1", "--retry-delay", "0.001", "--timeout", "5"])
    assert out.read_text().splitlines() == [TEXT.decode().splitlines()[i] for i in sample_indices(4, 3000, 10)]
    with pytest.raises(SystemExit, match=r"^relm fetch: error: --source is not JSON"):
        main(["fetch", "--source", "{path: x}", "--out", str(out)])
