"""Corpus sources beyond one file: URL lists, drop_blank, dedup, the data lock, mirrors, bearer tokens, the cleaning
of train corpora from valid/test lines, and the memory of sampling. Downloads go to a real HTTP server on
127.0.0.1 (tests/test_fetch.py's)."""
import gzip
import json
import lzma
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from relm.cli import main
from relm.errors import InputError
from relm.text.fetch import fetch, read_lock, remove_eval_lines
from test_fetch import server, sha  # noqa: F401

logs = []
log = logs.append


def lines(n, prefix):
    return "".join(f"{prefix} {i}\n" for i in range(n)).encode()


def test_url_list_is_concatenated_in_order(server, tmp_path):
    parts = {"/a.txt": lines(3, "a"), "/b.txt.gz": gzip.compress(lines(2, "b")), "/c.xz": lzma.compress(b"c\nc2")}
    server.files.update(parts)
    source = {"urls": [f"{server.url}/a.txt", {"url": f"{server.url}/b.txt.gz", "sha256": sha(parts["/b.txt.gz"])},
                       {"url": f"{server.url}/c.xz", "format": "xz"}]}
    out = fetch(source, tmp_path / "out.txt", lock=tmp_path / "data.lock", log=log)
    assert out.read_bytes() == lines(3, "a") + lines(2, "b") + b"c\nc2\n"
    assert not list(tmp_path.glob("*.part*"))
    lock = read_lock(tmp_path / "data.lock")
    assert lock[f"{server.url}/a.txt"] == (sha(parts["/a.txt"]), len(parts["/a.txt"]))
    assert set(lock) == {f"{server.url}/{p[1:]}" for p in parts}  # config checksums are recorded too


@pytest.mark.parametrize("drop_blank, dedup, expected", [
    (False, False, b"x\n\ny\nx\n\nz\ny\n"),
    (True, False, b"x\ny\nx\nz\ny\n"),
    (False, True, b"x\n\ny\nz\n"),
    (True, True, b"x\ny\nz\n"),
])
def test_drop_blank_and_dedup(tmp_path, drop_blank, dedup, expected):
    (tmp_path / "in.txt").write_bytes(b"x\n\ny\nx\n\nz\ny\n")
    out = fetch({"path": str(tmp_path / "in.txt"), "drop_blank": drop_blank, "dedup": dedup}, tmp_path / "o.txt",
                log=log)
    assert out.read_bytes() == expected


def test_sampling_comes_after_dedup(tmp_path):
    (tmp_path / "in.txt").write_bytes(lines(50, "u") * 3)  # each line three times
    out = fetch({"path": str(tmp_path / "in.txt"), "dedup": True}, tmp_path / "o.txt", lines=20, seed=3, log=log)
    got = out.read_bytes().splitlines()
    assert len(got) == len(set(got)) == 20
    with pytest.raises(InputError, match="asked for 51 lines .* only 50"):
        fetch({"path": str(tmp_path / "in.txt"), "dedup": True}, tmp_path / "o2.txt", lines=51, log=log)


def test_lock_records_then_refuses_a_changed_file(server, tmp_path):
    server.files["/mono.txt"] = lines(10, "v1")
    source, lock, out = {"url": f"{server.url}/mono.txt"}, tmp_path / "data.lock", tmp_path / "raw" / "train.xx"
    fetch(source, out, lock=lock, log=log)
    assert read_lock(lock)[f"{server.url}/mono.txt"][0] == sha(lines(10, "v1"))
    fetch(source, out, lock=lock, log=log)  # same file upstream: fine
    server.files["/mono.txt"] = lines(10, "v2")
    out.unlink()
    with pytest.raises(InputError, match=rf"{server.url}/mono.txt changed upstream.*{lock}.*delete its line"):
        fetch(source, out, lock=lock, log=log)
    assert not out.exists() and not list(out.parent.glob("*.part*"))
    lock.write_text("")  # the user accepts the new file
    fetch(source, out, lock=lock, log=log)
    assert out.read_bytes() == lines(10, "v2")


def test_url_without_checksum_needs_a_lock(server, tmp_path):
    server.files["/m.txt"] = b"a\n"
    with pytest.raises(InputError, match="needs a 'sha256'"):
        fetch({"url": f"{server.url}/m.txt"}, tmp_path / "o", log=log)


def test_lock_command_prints_the_lock(server, tmp_path, capsys):
    server.files["/m.txt"] = b"a\n"
    fetch({"url": f"{server.url}/m.txt"}, tmp_path / "o", lock=tmp_path / "data.lock", log=log)
    main(["lock", "--lock", str(tmp_path / "data.lock")])
    assert capsys.readouterr().out == f"{sha(b'a' + bytes([10]))}\t2\t{server.url}/m.txt\n"
    main(["lock", "--lock", str(tmp_path / "data.lock"), "--format", "md"])
    assert f"| {server.url}/m.txt | 2 | `{sha(b'a' + bytes([10]))}` |" in capsys.readouterr().out


def test_mirror_serves_the_file_and_the_lock_keeps_the_url(server, tmp_path):
    server.files["/statmt/news.gz"] = gzip.compress(b"n1\nn2\n")
    url = "https://data.statmt.org/news-crawl/en/news.gz"
    main(["fetch", "--source", json.dumps({"url": url}), "--out", str(tmp_path / "o"), "--lock",
          str(tmp_path / "data.lock"), "--mirrors", json.dumps({"https://data.statmt.org/news-crawl/en/":
                                                                  f"{server.url}/statmt/"})])
    assert (tmp_path / "o").read_bytes() == b"n1\nn2\n"
    assert list(read_lock(tmp_path / "data.lock")) == [url]
    assert server.requests[-1][0] == "/statmt/news.gz"


def test_bearer_token_from_the_environment(tmp_path, monkeypatch):
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            self.send_response(200 if self.headers.get("Authorization") == "Bearer s3cret" else 401)
            self.send_header("Content-Length", "6")
            self.end_headers()
            self.wfile.write(b"gated\n")

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/oscar.txt"
    try:
        source = {"url": url, "token_env": "RELM_TEST_TOKEN"}
        monkeypatch.delenv("RELM_TEST_TOKEN", raising=False)
        with pytest.raises(InputError, match="RELM_TEST_TOKEN .*not set"):
            fetch(source, tmp_path / "o", lock=tmp_path / "data.lock", log=log)
        monkeypatch.setenv("RELM_TEST_TOKEN", "s3cret")
        messages = []
        fetch(source, tmp_path / "o", lock=tmp_path / "data.lock", log=messages.append)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert seen == ["Bearer s3cret"] and (tmp_path / "o").read_bytes() == b"gated\n"
    assert "s3cret" not in "".join(messages) + (tmp_path / "data.lock").read_text()


def test_clean_removes_valid_and_test_lines(tmp_path, capsys):
    (tmp_path / "train").write_text("keep 1\nthe test line\nkeep 2\n  a valid line \nkeep 3\n")
    (tmp_path / "valid").write_text("a valid line\n\n")
    (tmp_path / "test").write_text("the test line\n")
    main(["clean", "--train", str(tmp_path / "train"), "--exclude", str(tmp_path / "valid"), str(tmp_path / "test"),
          "--out", str(tmp_path / "out")])
    assert (tmp_path / "out").read_text() == "keep 1\nkeep 2\nkeep 3\n"
    assert "2 lines that occur in" in capsys.readouterr().err
    main(["clean", "--train", str(tmp_path / "train"), "--exclude", "--out", str(tmp_path / "copy")])  # none
    assert (tmp_path / "copy").read_text() == (tmp_path / "train").read_text()
    with pytest.raises(InputError, match="every line occurs"):
        remove_eval_lines(tmp_path / "test", [tmp_path / "test"], tmp_path / "none", log=log)
    assert not (tmp_path / "none").exists()


# Peak RSS of this process: VmHWM (a fresh address space after exec; ru_maxrss would carry pytest's over).
PEAK = "print(next(ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM')))  # KiB"
SAMPLE_RSS = f"""
import sys
from relm.text.fetch import fetch
fetch({{"path": sys.argv[1]}}, sys.argv[2], lines=1_000_000, seed=0, log=lambda *a: None)
{PEAK}
"""


def test_sampling_memory_does_not_grow_with_the_corpus(tmp_path):
    """Sampling 1M of 10M lines: peak RSS (figures printed) stays far below what 10M Python objects would take; the
    keys are computed one block at a time (fetch.py's module docstring)."""
    corpus = tmp_path / "big.txt"
    with open(corpus, "wb") as f:
        for start in range(0, 10_000_000, 1_000_000):
            f.write("".join(f"sentence number {i}\n" for i in range(start, start + 1_000_000)).encode())
    base = subprocess.run([sys.executable, "-c", f"import relm.text.fetch\n{PEAK}"], capture_output=True, text=True,
                          check=True)
    r = subprocess.run([sys.executable, "-c", SAMPLE_RSS, str(corpus), str(tmp_path / "sample.txt")],
                       capture_output=True, text=True, check=True)
    base_mb, peak_mb = int(base.stdout) / 1024, int(r.stdout) / 1024
    size_mb = corpus.stat().st_size / 1e6
    print(f"sampling 1M of 10M lines ({size_mb:.0f} MB): peak RSS {peak_mb:.0f} MB, of which {base_mb:.0f} MB is "
          "Python + numpy + relm at import")
    assert sum(1 for _ in open(tmp_path / "sample.txt", "rb")) == 1_000_000
    assert peak_mb - base_mb < 60, (peak_mb, base_mb)  # 10M Python ints alone would take ~280 MB


def test_token_is_not_sent_on_to_a_redirect(tmp_path, monkeypatch):
    """A hub that redirects to a CDN: the bearer token stays with the host it was meant for."""
    seen = {}

    def serve(name, answer):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                seen[name] = self.headers.get("Authorization")
                answer(self)

            def log_message(self, *args):
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
        return httpd

    def cdn_answer(h):
        h.send_response(200)
        h.send_header("Content-Length", "5")
        h.end_headers()
        h.wfile.write(b"text\n")

    cdn = serve("cdn", cdn_answer)

    def hub_answer(h):
        h.send_response(302)
        h.send_header("Location", f"http://127.0.0.1:{cdn.server_address[1]}/blob")
        h.send_header("Content-Length", "0")
        h.end_headers()

    hub = serve("hub", hub_answer)
    monkeypatch.setenv("RELM_TEST_TOKEN", "s3cret")
    try:
        fetch({"url": f"http://127.0.0.1:{hub.server_address[1]}/f.txt", "token_env": "RELM_TEST_TOKEN"},
              tmp_path / "o", lock=tmp_path / "data.lock", log=log)
    finally:
        for httpd in (hub, cdn):
            httpd.shutdown()
            httpd.server_close()
    assert seen == {"hub": "Bearer s3cret", "cdn": None}
    assert (tmp_path / "o").read_bytes() == b"text\n"
