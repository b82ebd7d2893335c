"""The paper's data sources as typed in config/paper.yaml, against a local HTTP server on 127.0.0.1 that mirrors
the real URL layout (News Crawl years as .gz, CC-100 as .xz with blank lines between documents, the relm_unmt
valid/test sets at the pinned commit: the real Mk-En files from shared/data/setimes-mk-en where present). Sizes are
scaled down with a second config file; the `mirrors` setting points the downloads at the server. Preprocessing runs
through the vocabulary extension of both pairs; the lock records the unpinned downloads and then refuses a file that
changed upstream."""
import gzip
import hashlib
import lzma
import random

import yaml

from test_fetch import server  # noqa: F401
from workflow_utils import REPO, snakemake, write_config

SETIMES = REPO.parent / "shared" / "data" / "setimes-mk-en"
COMMIT = "7a289efd2b2a859d079a25634f7b7bfbf65b4f1c"
PAPER = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())


def words(rng, alphabet, n):
    return " ".join("".join(rng.choice(alphabet) for _ in range(rng.randint(2, 7))) for _ in range(n))


def sentences(seed, alphabet, n):
    rng = random.Random(seed)
    return [words(rng, alphabet, rng.randint(4, 12)).capitalize() + "." for _ in range(n)]


LATIN, CYRILLIC, ALBANIAN = "abcdefghiklmnoprstuvwy", "абвгдежзиклмнопрстуфхцчш", "abcdëefghijklmnopqrstuvxyzç"


def fixtures():
    """{URL path on the real servers: bytes}."""
    files = {}
    en = sentences(1, LATIN, 400)
    for year in range(2007, 2018):  # overlapping years: dedup has something to do
        files[f"data.statmt.org/news-crawl/en/news.{year}.en.shuffled.deduped.gz"] = gzip.compress(
            "".join(s + "\n" for s in en[(year - 2007) * 30:(year - 2007) * 30 + 60]).encode())
    for lang, alphabet in (("mk", CYRILLIC), ("sq", ALBANIAN)):
        docs = [sentences(10 + d, alphabet, 12) for d in range(25)]
        files[f"data.statmt.org/cc-100/{lang}.txt.xz"] = lzma.compress("\n".join(
            "".join(s + "\n" for s in doc) for doc in docs).encode())
    for pair, lang, alphabet in (("mk-en", "mk", CYRILLIC), ("sq-en", "sq", ALBANIAN)):
        for split, seed in (("valid", 100), ("test", 200)):
            real = SETIMES / f"{split}_raw.{lang}"
            if pair == "mk-en" and real.exists():
                files[f"raw.githubusercontent.com/alexandra-chron/relm_unmt/{COMMIT}/data/{pair}/{split}_raw.{lang}"] = \
                    real.read_bytes()
                files[f"raw.githubusercontent.com/alexandra-chron/relm_unmt/{COMMIT}/data/{pair}/{split}_raw.en"] = \
                    (SETIMES / f"{split}_raw.en").read_bytes()
                continue
            for side, abc in ((lang, alphabet), ("en", LATIN)):
                files[f"raw.githubusercontent.com/alexandra-chron/relm_unmt/{COMMIT}/data/{pair}/{split}_raw.{side}"] = \
                    "".join(s + "\n" for s in sentences(seed + len(side), abc, 40)).encode()
    return files


def overrides(base_url, files):
    """Small sizes, the server as mirror, and the sha256 of fixtures that stand in for pinned files."""
    data = {}
    for group, sources in PAPER["data"].items():
        for key, src in sources.items():
            if "sha256" in src:
                path = src["url"].split("://", 1)[1]
                if hashlib.sha256(files[path]).hexdigest() != src["sha256"]:
                    data.setdefault(group, {})[key] = {"sha256": hashlib.sha256(files[path]).hexdigest()}
    data.setdefault("en", {})["train.en"] = {"lines": 300}
    return {"data": data, "bpe": {"hmr_merges": 300, "joint_merges": 300}, "threads": 1,
            "mirrors": {"https://data.statmt.org/": f"{base_url}/data.statmt.org/",
                        "https://raw.githubusercontent.com/": f"{base_url}/raw.githubusercontent.com/"}}


def test_paper_data_through_vocabulary_extension(server, tmp_path):
    files = fixtures()
    server.files.update({f"/{path}": body for path, body in files.items()})
    small = write_config(tmp_path / "small.yaml", overrides(server.url, files))
    targets = [f"data/{pair}/vocab.{pair}-ext.json" for pair in PAPER["pairs"]]
    args = ["--cores", "2", "--configfile", str(REPO / "config" / "paper.yaml"), str(small)]
    snakemake(tmp_path, *targets, *args, timeout=1200)

    for pair in PAPER["pairs"]:
        assert (tmp_path / f"data/{pair}/vocab.{pair}-ext.json").is_file()
    # CC-100: 25 documents of 12 lines, blank lines dropped; News Crawl: 11 years of 60 lines, 30 shared with the
    # next year: 360 distinct lines, 300 sampled.
    assert sum(1 for _ in open(tmp_path / "data/mk-en/raw/train.mk")) == 300
    assert sum(1 for _ in open(tmp_path / "data/en/raw/train.en")) == 300
    assert "360 lines after dropping 300 repeated lines" in (tmp_path / "logs/fetch/en.train.en.log").read_text()
    assert "0 lines that occur in" in (tmp_path / "logs/clean/mk-en.mk.log").read_text()
    if (SETIMES / "valid_raw.mk").exists():  # the real sets arrived with their pinned sha256
        assert (tmp_path / "data/mk-en/raw/valid.mk").read_bytes() == (SETIMES / "valid_raw.mk").read_bytes()
    lock = (tmp_path / "data.lock").read_text()
    for year in range(2007, 2018):
        assert f"https://data.statmt.org/news-crawl/en/news.{year}.en.shuffled.deduped.gz\n" in lock
    assert "https://data.statmt.org/cc-100/sq.txt.xz\n" in lock and "127.0.0.1" not in lock

    # A corpus that changes upstream is an error naming the URL and the lock, and the lock stays as it was.
    server.files["/data.statmt.org/cc-100/mk.txt.xz"] = lzma.compress(b"a new upstream file\n")
    proc = snakemake(tmp_path, "data/mk-en/raw/train.mk", *args, "--forcerun", "fetch_train", check=False)
    assert proc.returncode != 0
    log = (tmp_path / "logs/fetch/mk-en.train.mk.log").read_text()
    assert "https://data.statmt.org/cc-100/mk.txt.xz changed upstream" in log and "data.lock" in log, log
    assert (tmp_path / "data.lock").read_text() == lock
