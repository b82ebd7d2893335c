"""Downloads against a real HTTP server on 127.0.0.1 (Range support, cut transfers), unpacking, sampling, local files."""
import gzip
import hashlib
import io
import lzma
import re
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from relm.errors import InputError
from relm.files import sha256_file
from relm.text.fetch import fetch

TEXT = "".join(f"line {i} ünïcode\n" for i in range(3000)).encode()
quiet = lambda *a: None  # noqa: E731


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def zipped(data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("corpus/train.txt", data)
    return buf.getvalue()


class Server:
    """Serves `files`; records (path, Range header) per request; `cut[path] = k` cuts the next k transfers short."""

    def __init__(self):
        self.files, self.requests, self.cut, self.ignore_range = {}, [], {}, False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
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
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
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
], ids=["plain", "gz", "xz", "zip"])
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
    fetch({"url": f"{server.url}/data.txt", "sha256": sha(TEXT)}, out, retries=2, log=quiet)
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
