"""Starting from a released MLM (config `pretrained`): fastBPE codes conversion, acquiring the checkpoint as it is,
the config checks, and the workflow's plan with the block."""
import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from relm.errors import ConfigError, InputError
from relm.model.xlm import fetch_checkpoint
from relm.text.bpe import BPE, EOW, convert_fastbpe_codes, learn_codes
from relm.workflow import check_config, released_model_keys
from workflow_utils import REPO, snakemake, tiny_config, write_config

quiet = lambda *a: None  # noqa: E731

# fastBPE learnbpe output ("left right count", merge order = line order); "</w>" is glued to a word's last character
FASTBPE_CODES = "e r</w> 10\nl o 8\nlo w</w> 7\nn e 5\nne w 4\n"
# segmentations derived by hand from fastBPE's applybpe (lowest-ranked pair first, all its occurrences)
EXPECTED = {
    "lower": "lo@@ w@@ er",  # l o w e r</w> -> l o w er</w> -> lo w er</w>; no merge (lo, w) in the codes
    "low": "low",  # l o w</w> -> lo w</w> -> low</w>
    "newer": "new@@ er",  # n e w e r</w> -> n e w er</w> -> ne w er</w> -> new er</w>
    "new": "ne@@ w",  # n e w</w> -> ne w</w>: the merge is (ne, w), not (ne, w</w>)
    "lowlow": "lo@@ w@@ low",  # l o w l o w</w> -> lo w lo w</w> (both) -> lo w low</w>
    "r": "r",
    "er": "er",
}


def fastbpe_apply(codes_text: str, word: str) -> str:
    """fastBPE's applybpe for one word, written from fastBPE.hpp (reference for the conversion)."""
    ranks = {}
    for i, line in enumerate(codes_text.splitlines()):
        left, right, _ = line.split(" ")
        ranks[left, right] = i
    syms = list(word[:-1]) + [word[-1] + EOW]
    while len(syms) > 1:
        pairs = [(ranks[p], p) for p in zip(syms, syms[1:]) if p in ranks]
        if not pairs:
            break
        best = min(pairs)[1]
        out, i = [], 0
        while i < len(syms):
            if i + 1 < len(syms) and (syms[i], syms[i + 1]) == best:
                out.append(syms[i] + syms[i + 1])
                i += 2
            else:
                out.append(syms[i])
                i += 1
        syms = out
    syms[-1] = syms[-1][: -len(EOW)]
    return "@@ ".join(syms)


def test_converted_fastbpe_codes_segment_as_fastbpe(tmp_path):
    (tmp_path / "codes.fastbpe").write_text(FASTBPE_CODES)
    assert convert_fastbpe_codes(tmp_path / "codes.fastbpe", tmp_path / "codes", log=quiet) == 5
    assert (tmp_path / "codes").read_text() == "#version: 0.2\ne r</w>\nl o\nlo w</w>\nn e\nne w\n"
    bpe = BPE(tmp_path / "codes")
    assert bpe.version == (0, 2)
    for word, want in EXPECTED.items():
        assert bpe.apply_line(word) == want == fastbpe_apply(FASTBPE_CODES, word), word
    assert bpe.apply_line("lower newer new") == "lo@@ w@@ er new@@ er ne@@ w"
    # without the version line the same merges would be read with subword-nmt 0.1's separate end mark
    (tmp_path / "no-header").write_text("".join(f"{' '.join(line.split()[:2])}\n" for line in FASTBPE_CODES.splitlines()))
    assert BPE(tmp_path / "no-header").apply_line("lower") != EXPECTED["lower"]


def test_conversion_round_trip_of_learned_codes(tmp_path):
    """Codes learned by relm, written as fastBPE writes them (with counts), convert back to the very same file, and
    segment a corpus as the fastBPE reference does."""
    words = ["lower", "lowest", "newer", "newest", "wider", "low", "new", "slow", "slower", "snow", "know", "known"]
    text = "\n".join(" ".join(words[(i * 7 + j) % len(words)] for j in range(i % 5 + 1)) for i in range(200)) + "\n"
    (tmp_path / "train.tok").write_text(text)
    learn_codes([tmp_path / "train.tok"], tmp_path / "learned", 40, log=quiet)
    merges = (tmp_path / "learned").read_text().splitlines()[1:]
    fast = "".join(f"{m} {1000 - i}\n" for i, m in enumerate(merges))
    (tmp_path / "codes.fastbpe").write_text(fast)
    convert_fastbpe_codes(tmp_path / "codes.fastbpe", tmp_path / "codes", log=quiet)
    assert (tmp_path / "codes").read_bytes() == (tmp_path / "learned").read_bytes()
    bpe = BPE(tmp_path / "codes")
    for w in set(text.split()) | {"lowly", "snowier"}:
        assert bpe.apply_line(w) == fastbpe_apply(fast, w), w


@pytest.mark.parametrize("content, message", [
    ("#version: 0.2\nl o\n", "subword-nmt header, not fastBPE codes"),
    ("l o\n", ":1: expected fastBPE codes 'left right count', got 'l o'"),
    ("l o 3\nlo w 2 1\n", ":2: expected fastBPE codes"),
    ("l o x\n", ":1: count 'x' is not a non-negative integer"),
    ("l o 3\nn e 2\nl o 1\n", ":3: merge 'l' 'o' repeats line 1"),
    ("l</w> o 3\n", "may only end the right symbol"),
    ("l o</w>x 3\n", "may only end the right symbol"),
    ("", "no merges"),
    ("\n\n", "no merges"),
], ids=["subword-nmt", "two-fields", "four-fields", "count", "repeated", "eow-left", "eow-inside", "empty", "blank"])
def test_bad_fastbpe_codes_are_refused(tmp_path, content, message):
    (tmp_path / "codes.fastbpe").write_text(content)
    with pytest.raises(InputError, match=message) as e:
        convert_fastbpe_codes(tmp_path / "codes.fastbpe", tmp_path / "codes", log=quiet)
    assert str(tmp_path / "codes.fastbpe") in str(e.value)
    assert not (tmp_path / "codes").exists()


def test_cli_convert_codes(tmp_path):
    from relm.cli import main

    (tmp_path / "in").write_text(FASTBPE_CODES)
    main(["bpe", "convert-codes", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")])
    assert BPE(tmp_path / "out").apply_line("newer") == "new@@ er"
    (tmp_path / "bad").write_text("l o\n")
    with pytest.raises(SystemExit, match=r"^relm bpe: error: .*bad:1: expected fastBPE codes"):
        main(["bpe", "convert-codes", "--input", str(tmp_path / "bad"), "--output", str(tmp_path / "o2")])


# ---- the checkpoint file, as it is ----

# bytes that text handling would change: a zip header (torch's format), CRLF, bare CR, no final newline
BINARY = b"PK\x03\x04" + bytes(range(256)) + b"a\r\nb\rc"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def http_file():
    """Serves BINARY at /ck.pth on 127.0.0.1."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/ck.pth":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(BINARY)))
            self.end_headers()
            self.wfile.write(BINARY)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/ck.pth"
    httpd.shutdown()
    httpd.server_close()


def test_fetch_checkpoint_downloads_bytes_unchanged(tmp_path, http_file):
    out = fetch_checkpoint({"url": http_file, "sha256": sha(BINARY)}, tmp_path / "r" / "ck.pth", log=quiet)
    assert out.read_bytes() == BINARY and not (tmp_path / "r" / "ck.pth.part").exists()
    with pytest.raises(InputError, match="checksum mismatch"):
        fetch_checkpoint({"url": http_file, "sha256": "0" * 64}, tmp_path / "bad.pth", retries=0, log=quiet)
    assert not (tmp_path / "bad.pth").exists()
    with pytest.raises(InputError, match="needs a 'sha256'"):
        fetch_checkpoint({"url": http_file}, tmp_path / "x.pth", log=quiet)


def test_fetch_checkpoint_links_a_local_file(tmp_path):
    src = tmp_path / "mlm.pth"
    src.write_bytes(BINARY)
    out = fetch_checkpoint({"path": str(src), "sha256": sha(BINARY)}, tmp_path / "r" / "ck.pth", log=quiet)
    assert out.read_bytes() == BINARY and out.stat().st_ino == src.stat().st_ino  # same file system: a hard link
    with pytest.raises(InputError, match="checksum mismatch for"):
        fetch_checkpoint({"path": str(src), "sha256": "0" * 64}, tmp_path / "r2.pth", log=quiet)
    with pytest.raises(InputError, match="does not exist"):
        fetch_checkpoint({"path": str(tmp_path / "nope.pth")}, tmp_path / "r3.pth", log=quiet)
    with pytest.raises(InputError, match="member not supported here"):
        fetch_checkpoint({"path": str(src), "member": "x"}, tmp_path / "r4.pth", log=quiet)
    assert not any((tmp_path / n).exists() for n in ("r2.pth", "r3.pth", "r4.pth"))


# ---- the config ----

def released_files(tmp_path) -> dict:
    for name in ("ck.pth", "codes.fastbpe", "vocab.hx"):
        (tmp_path / name).write_text("x\n")
    return {"checkpoint": {"path": str(tmp_path / "ck.pth")}, "codes": {"path": str(tmp_path / "codes.fastbpe")},
            "vocab": {"path": str(tmp_path / "vocab.hx")}}


def released_config(tmp_path, **model):
    cfg = tiny_config(pretrained=released_files(tmp_path))
    cfg["model"].update(pre_norm=False, **model)
    return cfg


SCHEMA = REPO / "config" / "schema.yaml"


def test_config_with_pretrained_block(tmp_path):
    cfg = released_config(tmp_path)
    for split in ("valid", "test"):  # only HMR pretraining reads the HMR valid/test sets
        del cfg["data"]["hx"][f"{split}.hx"]
    check_config(cfg, SCHEMA)
    keys = released_model_keys(cfg)
    assert keys["model.dim"] == 32 and keys["model.pre_norm"] is False and keys["model.gelu"] is True
    assert keys["mlm_systems.relm_adapters.model.adapter_size"] == 8 and "model.dropout" not in keys
    cfg["mlm_systems"]["relm"]["model"] = {"n_layers": 3}
    assert released_model_keys(cfg)["mlm_systems.relm.model.n_layers"] == 3
    del cfg["pretrained"]
    with pytest.raises(ConfigError, match="data.hx.valid.hx"):
        check_config(cfg, SCHEMA)


@pytest.mark.parametrize("mutate, message", [
    (lambda c, t: c["pretrained"]["vocab"].update(path=str(t / "nope")), "config key 'pretrained.vocab.path': file not"),
    (lambda c, t: c["pretrained"].pop("codes"), "'codes' is a required property"),
    (lambda c, t: c["pretrained"]["checkpoint"].update(member="a.pth"), "pretrained.checkpoint"),
    (lambda c, t: c["pretrained"].update(checkpoint={"url": "https://x/y.pth"}), "pretrained.checkpoint"),
    (lambda c, t: c["model"].update(pre_norm=True), "config key 'model.pre_norm' is true, but the released MLM"),
    (lambda c, t: c["mlm_systems"]["relm_adapters"]["model"].update(pre_norm=True),
     "config key 'mlm_systems.relm_adapters.model.pre_norm' is true"),
], ids=["missing-file", "no-codes", "member", "no-sha256", "pre-norm", "pre-norm-system"])
def test_bad_pretrained_block_names_the_key(tmp_path, mutate, message):
    cfg = released_config(tmp_path)
    mutate(cfg, tmp_path)
    with pytest.raises(ConfigError, match=message):
        check_config(cfg, SCHEMA)


def test_plan_with_a_released_mlm(tmp_path):
    """The dry run imports the released model instead of pretraining; the HMR codes and vocabulary come from it;
    every MLM stage waits for the import's check."""
    cfg = released_config(tmp_path)
    out = snakemake(tmp_path / "wd", "-n", "-p", "--cores", "2", "all",
                    config=write_config(tmp_path / "c.yaml", cfg)).stdout
    for rule in ("released_checkpoint", "released_codes_fetch", "released_codes", "released_vocab",
                 "import_released", "bpe_learn_joint", "mlm", "unmt"):
        assert f"rule {rule}:" in out, rule
    for rule in ("pretrain", "bpe_learn_hmr", "vocab_hmr"):
        assert f"rule {rule}:" not in out, rule
    jobs = out.split("\n\n")
    xlm = next(j for j in jobs if "rule mlm:" in j and "system=xlm\n" in j)
    assert "models/hx/released/import.json" in xlm.split("output:")[0]
    relm = next(j for j in jobs if "rule mlm:" in j and "system=relm\n" in j)
    assert "--init models/hx/released/model.pt" in relm
