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
    """fastBPE's applybpe for one word, written from its description in fastBPE.hpp (tokenize_str, process_bpe): the
    reference the converted codes are compared with."""
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
    ("l o 3\nlo w 2\nl ow 1\n", ":3: merge 'l' 'ow' makes 'low', as line 2 does"),
    ("l</w> o 3\n", "may only end the right symbol"),
    ("l o</w>x 3\n", "may only end the right symbol"),
    ("", "no merges"),
    ("\n\n", "no merges"),
], ids=["subword-nmt", "two-fields", "four-fields", "count", "repeated", "same-piece", "eow-left", "eow-inside", "empty", "blank"])
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


def test_readme_example_is_valid_config():
    """The `pretrained` block shown in the README passes the schema."""
    import yaml

    from relm.workflow import check_schema

    text = (REPO / "README.md").read_text().split("## Starting from a released MLM")[1]
    block = yaml.safe_load(text.split("```yaml\n")[1].split("```")[0])
    assert set(block["pretrained"]) == {"checkpoint", "codes", "vocab"}
    check_schema(tiny_config(**block), SCHEMA)


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
    xlm = next(j for j in jobs if "rule mlm:" in j and "system=xlm, seed=0\n" in j)
    assert "models/hx/released/import.json" in xlm.split("output:")[0]
    relm = next(j for j in jobs if "rule mlm:" in j and "system=relm, seed=0\n" in j)
    assert "--init models/hx/released/model.pt" in relm


# ---- the workflow, from a released MLM to the UNMT models of the RE-LM systems ----

def make_release(tmp_path, cfg) -> dict:
    """A release as the original authors' (XLM's) tools would have written it, for the tiny demo's HMR: fastBPE codes
    ('left right count') and vocabulary learned on the demo HMR corpus (by this workflow, then written in fastBPE's
    formats), and a checkpoint in XLM's format whose dictionary is that vocabulary (14 specials + its lines)."""
    from relm.files import sha256_file
    from relm.tokens import SPECIAL_WORDS
    from test_xlm_import import save_xlm, xlm_params, xlm_state

    prep = tmp_path / "prep"
    snakemake(prep, "--cores", "2", "data/hx/codes.hx", "data/hx/vocab.hx", config=write_config(tmp_path / "p.yaml", cfg))
    rel = tmp_path / "release"
    rel.mkdir()
    merges = (prep / "data/hx/codes.hx").read_text().splitlines()[1:]  # after "#version: 0.2"
    (rel / "codes.en").write_text("".join(f"{m} {100000 - i}\n" for i, m in enumerate(merges)))
    (rel / "vocab.en").write_text((prep / "data/hx/vocab.hx").read_text())  # getvocab's format already
    words = SPECIAL_WORDS + [line.split(" ")[0] for line in (rel / "vocab.en").read_text().splitlines()]
    m = cfg["model"]
    state = xlm_state(n_langs=1, seed=3, dim=m["dim"], layers=m["n_layers"], n_words=len(words))
    params = xlm_params(langs=("hx",), dim=m["dim"], layers=m["n_layers"], heads=m["n_heads"], n_words=len(words))
    save_xlm(rel / "mlm_hx.pth", {"model": state}, params, words=words)
    return {"dir": rel, "prep": prep, "state": state, "words": words,
            "block": {"checkpoint": {"path": str(rel / "mlm_hx.pth"), "sha256": sha256_file(rel / "mlm_hx.pth")},
                      "codes": {"path": str(rel / "codes.en")}, "vocab": {"path": str(rel / "vocab.en")}}}


@pytest.mark.slow
def test_workflow_starts_from_a_released_mlm(tmp_path):
    import json

    import torch

    from relm.files import sha256_file
    from relm.model.checkpoint import load_model

    base = tiny_config()
    base["model"]["pre_norm"] = False  # XLM's post-norm, as every released XLM / RE-LM checkpoint
    release = make_release(tmp_path, base)
    rel = release["dir"]

    # a vocabulary with one line removed is refused by the first job that reads the checkpoint, before any training
    lines = (rel / "vocab.en").read_text().splitlines(keepends=True)
    (rel / "vocab-short.en").write_text("".join(lines[:50] + lines[51:]))
    bad = tiny_config(pretrained=dict(release["block"], vocab={"path": str(rel / "vocab-short.en")}), model=base["model"])
    wd = tmp_path / "bad"
    proc = snakemake(wd, "--cores", "2", "all", config=write_config(tmp_path / "bad.yaml", bad), check=False)
    assert proc.returncode != 0
    error = (wd / "logs/import_released/hx.log").read_text().strip().splitlines()
    n = len(release["words"])
    assert error[-1] == (
        f"relm import-xlm: error: vocabulary data/hx/vocab.hx does not match checkpoint "
        f"data/hx/released/checkpoint.pth: {n - 15} tokens + 14 special words = {n - 1} ids, but the checkpoint has "
        f"{n} embedding rows (its dictionary: {n} words) (config 'pretrained': checkpoint {rel / 'mlm_hx.pth'}, "
        f"vocab {rel / 'vocab-short.en'})"), error
    assert not (wd / "logs/mlm").exists() and not (wd / "logs/unmt").exists() and not (wd / "models/lx-hx").exists()
    assert not (wd / "models/hx/released/model.pt").exists()

    # the release as it is: through to the UNMT models of both RE-LM systems
    cfg = tiny_config(pretrained=release["block"], model=base["model"])
    for split in ("valid", "test"):  # only HMR pretraining evaluates on these
        del cfg["data"]["hx"][f"{split}.hx"]
    wd = tmp_path / "run"
    snakemake(wd, "--cores", "2", "models/lx-hx/relm/seed0/unmt/model.pt", "models/lx-hx/relm_adapters/seed0/unmt/model.pt",
              config=write_config(tmp_path / "run.yaml", cfg))
    for skipped in ("pretrain", "bpe_learn_hmr", "vocab_hmr"):
        assert not (wd / "logs" / skipped).exists(), skipped
    assert not (wd / "models/hx/mlm").exists()
    # the HMR codes are the released ones (converted), the HMR vocabulary is the released file, and the HMR train
    # corpus is binarized with it
    assert (wd / "data/hx/codes.hx").read_bytes() == (release["prep"] / "data/hx/codes.hx").read_bytes()
    assert (wd / "data/hx/vocab.hx").read_bytes() == (rel / "vocab.en").read_bytes()
    meta = json.loads((wd / "data/hx/bin-hmr/train.hx.json").read_text())
    assert meta["vocab_sha256"] == sha256_file(rel / "vocab.en") and meta["n_words"] == len(release["words"])
    summary = json.loads((wd / "models/hx/released/import.json").read_text())
    assert summary["checkpoint_sha256"] == release["block"]["checkpoint"]["sha256"]
    assert summary["checked_model"]["model.pre_norm"] is False and summary["checked_model"]["model.dim"] == 32

    # the RE-LM MLM stages started from the imported weights
    state = release["state"]
    imported = load_model(wd / "models/hx/released/model.pt")
    assert imported.words == release["words"]
    assert torch.equal(imported.encoder.state_dict()["embeddings.weight"], state["embeddings.weight"])
    for system in ("relm", "relm_adapters"):
        log = (wd / f"logs/mlm/lx-hx.{system}.seed0.log").read_text()
        assert "initialized from models/hx/released/model.pt, vocabulary extended by" in log, system
    adapters = load_model(wd / "models/lx-hx/relm_adapters/seed0/mlm/model.pt").encoder.state_dict()
    for key in ("attentions.0.q_lin.weight", "ffns.0.lin1.weight", "layer_norm2.0.bias"):  # frozen in that stage
        assert torch.equal(adapters[key], state[key]), key
    relm = load_model(wd / "models/lx-hx/relm/seed0/mlm/model.pt")
    assert relm.words[:n] == release["words"] and len(relm.words) > n  # the extended dictionary
    for system in ("relm", "relm_adapters"):
        assert (wd / f"models/lx-hx/{system}/seed0/unmt/model.pt").is_file()
