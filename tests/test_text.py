"""Tokenization, line reading and BPE (relm.text.tokenize, relm.text.bpe) on small inputs and the real Mk-En sample."""
import json
import re
from itertools import islice
from pathlib import Path

from collections import Counter

import pytest
from subword_nmt.apply_bpe import BPE as RefBPE
from subword_nmt.learn_bpe import learn_bpe as ref_learn_bpe

from relm.text.bpe import BPE, apply_file, learn_codes
from relm.errors import InputError
from relm.cli import main
from relm.files import CHUNK
from relm.text.tokenize import (
    check_parallel,
    count_text_lines,
    detokenize_line,
    iter_lines,
    normalize_tokenize_line,
    remove_bpe,
    tokenize_file,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "setimes-mk-en"
N_SAMPLE = 600  # lines of each real file used (keeps the module well under 20 s)
quiet = lambda *a: None  # noqa: E731


@pytest.mark.parametrize(
    "raw, lang, expected",
    [
        ("Тој рече: „Ова е тест“.", "mk", 'Тој рече : " Ова е тест " .'),  # „“ -> ", Cyrillic and case kept
        ("рече „да,“ и", "mk", 'рече " да " , и'),  # generic quote rule: ," -> ",  (not applied for English)
        ('He said "yes", then left.', "en", 'He said " yes , " then left .'),  # English rule: ", -> ,"
        ("wait…", "en", "wait ..."),
        ("a\u200bb\tc  d", "en", "a b c d"),  # non-printing characters become spaces, spaces collapse
        ("A co-op in Скопје costs 1\u00a0000 €.", "mk", "A co-op in Скопје costs 1.000 € ."),  # no @-@ split
        ("２０ （ok）", "en", "20 ( ok )"),  # full-width punctuation and digits replaced
        ("It’s R&D <b>", "en", "It 's R & D < b >"),  # no XML escaping (&amp; &lt;)
        ("", "mk", ""),
    ],
)
def test_normalize_tokenize_line(raw, lang, expected):
    assert normalize_tokenize_line(raw, lang) == expected


def test_detokenize_inverts_tokenize():
    raw = 'Hello, "world"! It\'s (almost) fine.'
    assert detokenize_line(normalize_tokenize_line(raw, "en"), "en") == raw


@pytest.mark.parametrize(
    "bpe, text",
    [("a@@ b c@@ d", "ab cd"), ("ab c@@", "ab c"), ("x@@y z", "x@@y z"), ("", ""), ("Ско@@ пје", "Скопје")],
)
def test_remove_bpe(bpe, text):
    assert remove_bpe(bpe) == text


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"a b\r\nc\r\n", "a b\nc\n"),  # CRLF -> LF
        (b"\xef\xbb\xbfHello\n", "Hello\n"),  # BOM at the start dropped
        (b"a\n\n\nb\n", "a\n\n\nb\n"),  # empty lines kept (alignment)
        (b"a\nb", "a\nb\n"),  # missing final newline added
        (b"a\xe2\x80\xa8b\n", "a b\n"),  # U+2028 is not a line break
        (b"a b\rc\rd\n", "a b\nc\nd\n"),  # bare CR (old Mac line ends): three lines, not one
        (b"a\r\r\nb\r", "a\n\nb\n"),  # CR then CRLF: an empty line between
    ],
)
def test_tokenize_file_line_handling(tmp_path, content, expected):
    inp, out = tmp_path / "in.txt", tmp_path / "out.tok"
    inp.write_bytes(content)
    n = tokenize_file(inp, out, "en", log=quiet)
    assert out.read_bytes().decode() == expected
    assert n == expected.count("\n")


@pytest.mark.parametrize(
    "content, max_len, pattern",
    [
        (b"good\nbad \xff\xfe here\n", 100, r"in\.txt:2: invalid UTF-8"),
        (b"ok\n\xef\xbb\xbfok\n\xc3\n", 100, r"in\.txt:3: invalid UTF-8"),  # truncated multi-byte sequence
        (b"ok\nok\n" + b"x" * 60 + b"\n", 50, r"in\.txt:3: line has 60 characters, more than the limit 50"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path, content, max_len, pattern):
    inp, out = tmp_path / "in.txt", tmp_path / "out.tok"
    inp.write_bytes(content)
    with pytest.raises(InputError, match=pattern):
        tokenize_file(inp, out, "en", max_line_chars=max_len, log=quiet)
    assert not out.exists() and list(tmp_path.iterdir()) == [inp]  # no output, no temp file left


@pytest.mark.parametrize("limit", [0, 100])
def test_long_lines_skipped_and_counted(tmp_path, limit):
    inp, out = tmp_path / "in.txt", tmp_path / "out.tok"
    long = "word " * 30_000  # 150000 characters: read in pieces, never whole
    inp.write_text(f"a\n{long}\nb\n{long}\r{long}\nc")
    logged = []
    n = tokenize_file(inp, out, "en", max_line_chars=limit, on_long_line="skip", log=logged.append)
    if limit == 0:  # no limit: nothing dropped
        assert n == 6 and not any(m.startswith("tokenize: skipped") for m in logged)
        return
    assert n == 3 and out.read_text() == "a\nb\nc\n"
    assert any(m.startswith(f"tokenize: skipped 3 of 6 lines of {inp} longer than 100 characters") and
               "line 2 (150000 chars), line 4 (150000 chars), line 5 (150000 chars)" in m for m in logged)
    with pytest.raises(InputError, match=r"in\.txt:2: line has 150000 characters, more than the limit 100"):
        tokenize_file(inp, out, "en", max_line_chars=limit, log=quiet)


def test_tokenize_cli_long_line_flags(tmp_path):
    inp, out = tmp_path / "in.txt", tmp_path / "out.tok"
    inp.write_text("short\n" + "x" * 50 + "\nend\n")
    args = ["tokenize", "--input", str(inp), "--output", str(out), "--lang", "en", "--max-line-chars", "20"]
    with pytest.raises(SystemExit, match=r"^relm tokenize: error: .*in\.txt:2: line has 50 characters"):
        main(args)
    main(args + ["--on-long-line", "skip"])
    assert out.read_text() == "short\nend\n"
    main(args[:-2])  # the default limit (10000) lets it through
    assert out.read_text().splitlines()[1] == "x" * 50


def test_all_lines_too_long(tmp_path):
    inp, out = tmp_path / "in.txt", tmp_path / "out.tok"
    inp.write_text("x" * 20 + "\n" + "y" * 30 + "\n")
    with pytest.raises(InputError, match=r"in\.txt: all 2 lines are longer than 10 characters"):
        tokenize_file(inp, out, "en", max_line_chars=10, on_long_line="skip", log=quiet)
    assert not out.exists()


@pytest.mark.parametrize("content, n", [
    (b"", 0), (b"a", 1), (b"a\n", 1), (b"a\r\nb\r\n", 2), (b"a\rb\rc", 3), (b"a\r\r\n", 2), (b"\n\n", 2),
    (b"x" * (CHUNK - 1) + b"\r\ny", 2),  # a CRLF split between two read blocks counts once
])
def test_count_text_lines_agrees_with_iter_lines(tmp_path, content, n):
    (tmp_path / "f").write_bytes(content)
    assert count_text_lines(tmp_path / "f") == len(list(iter_lines(tmp_path / "f"))) == n


def test_check_parallel(tmp_path):
    a, b = tmp_path / "x.en", tmp_path / "x.mk"
    a.write_text("1\n2\n3\n")
    b.write_text("1\n2\n3")  # no final newline: still 3 lines
    assert check_parallel(a, b) == 3
    b.write_text("1\n2\n")
    with pytest.raises(InputError, match=rf"{re.escape(str(a))} has 3 lines, {re.escape(str(b))} has 2"):
        check_parallel(a, b)
    b.write_bytes(b"1\r2\r3\r")  # old Mac line ends: 3 lines, as the tokenizer reads them
    assert check_parallel(a, b) == 3


def test_check_parallel_cli(tmp_path, capsys):
    a, b, out = tmp_path / "v.en", tmp_path / "v.mk", tmp_path / "ok" / "v.json"
    a.write_text("1\n2\n")
    b.write_text("1\n")
    with pytest.raises(SystemExit, match=rf"^relm check-parallel: error: parallel files differ in length: "
                                         rf"{re.escape(str(a))} has 2 lines, {re.escape(str(b))} has 1$"):
        main(["check-parallel", "--src", str(a), "--tgt", str(b), "--output", str(out)])
    assert not out.exists()
    b.write_text("x\ny\n")
    main(["check-parallel", "--src", str(a), "--tgt", str(b), "--output", str(out)])
    assert json.loads(out.read_text()) == {"src": str(a), "tgt": str(b), "lines": 2}
    with pytest.raises(SystemExit, match=r"parallel file .*nope does not exist"):
        main(["check-parallel", "--src", str(a), "--tgt", str(tmp_path / "nope")])


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """The first N_SAMPLE lines of the Mk-En valid sets, raw and tokenized."""
    if not (DATA / "valid_raw.mk").exists():
        pytest.skip(f"real Mk-En sample not found in {DATA}")
    d = tmp_path_factory.mktemp("real")
    files = {}
    for lang in ("en", "mk"):
        raw = d / f"raw.{lang}"
        raw.write_text("".join(line + "\n" for line in islice(iter_lines(DATA / f"valid_raw.{lang}"), N_SAMPLE)))
        tok = d / f"tok.{lang}"
        tokenize_file(raw, tok, lang, threads=2, chunk_lines=128, log=quiet)
        files[lang] = (raw, tok)
    return d, files


def test_tokenize_real_mk(real):
    d, files = real
    raw, tok = files["mk"]
    raw_lines, tok_lines = raw.read_text().splitlines(), tok.read_text().split("\n")[:-1]
    assert len(tok_lines) == len(raw_lines) == N_SAMPLE
    assert sum(line.count("„") for line in raw_lines) > 50  # the sample really has „…“ quotes
    assert not any(q in line for line in tok_lines for q in "„“”")
    assert sum(line.count('"') for line in tok_lines) >= sum(line.count("„") for line in raw_lines)
    letters = [c for line in tok_lines for c in line if c.isalpha()]
    assert sum("\u0400" <= c <= "\u04ff" for c in letters) / len(letters) > 0.9  # Cyrillic kept
    assert tok_lines == [normalize_tokenize_line(line, "mk") for line in raw_lines]  # chunking/pool keep the order
    single = d / "tok1.mk"
    tokenize_file(raw, single, "mk", threads=1, log=quiet)
    assert single.read_bytes() == tok.read_bytes()


@pytest.fixture(scope="module")
def codes(real):
    d, files = real
    out = d / "codes"
    assert learn_codes([files["en"][1], files["mk"][1]], out, merges=300, log=quiet) == 300
    return out


def test_learn_codes_equals_subword_nmt(real, codes):
    d, files = real
    cat = d / "cat.tok"
    cat.write_text(files["en"][1].read_text() + files["mk"][1].read_text())
    ref = d / "codes.ref"
    with open(cat, encoding="utf-8") as fi, open(ref, "w", encoding="utf-8") as fo:
        ref_learn_bpe(fi, fo, 300)
    assert codes.read_text() == ref.read_text()


@pytest.mark.parametrize("version_line", [True, False])  # codes format 0.2 and (header-less) 0.1
@pytest.mark.parametrize("lang", ["en", "mk"])
def test_bpe_equals_subword_nmt_and_inverts(real, codes, tmp_path, lang, version_line):
    d, files = real
    if not version_line:
        c = tmp_path / "codes.v01"
        c.write_text(codes.read_text().split("\n", 1)[1])
        codes = c
    tok = files[lang][1]
    out = tmp_path / "bpe"
    assert apply_file(codes, tok, out, log=quiet) == N_SAMPLE
    with open(codes, encoding="utf-8") as f:
        ref = RefBPE(f)
    tok_lines, bpe_lines = tok.read_text().split("\n")[:-1], out.read_text().split("\n")[:-1]
    assert bpe_lines == [ref.process_line(line) for line in tok_lines]
    assert sum(line.count("@@ ") for line in bpe_lines) > 1000  # segmentation really happened
    assert [remove_bpe(line) for line in bpe_lines] == tok_lines


@pytest.mark.parametrize("keep", [1.0, 0.8, 0.5])
def test_vocabulary_restricted_bpe_equals_subword_nmt(real, codes, tmp_path, keep):
    """fastBPE's `applybpe ... vocab` (the original's HMR valid/test): pieces missing from the vocabulary are split
    back along their merges; equal to subword-nmt's --vocabulary application; with the whole vocabulary a no-op."""
    import random

    d, files = real
    train = tmp_path / "train.bpe"
    apply_file(codes, files["en"][1], train, log=quiet)
    counts = Counter(train.read_text().split())
    rng = random.Random(0)
    kept = {t for t in sorted(counts) if rng.random() < keep}
    vocab = tmp_path / "vocab"
    vocab.write_text("".join(f"{t} {counts[t]}\n" for t in sorted(kept)))
    out = tmp_path / "restricted"
    apply_file(codes, files["mk"][1], out, vocab=vocab, log=quiet)
    with open(codes, encoding="utf-8") as f:
        ref = RefBPE(f, vocab=kept)
    lines = files["mk"][1].read_text().split("\n")[:-1]
    assert out.read_text().split("\n")[:-1] == [ref.process_line(line) for line in lines]
    plain = tmp_path / "plain"
    apply_file(codes, files["mk"][1], plain, log=quiet)
    assert (out.read_text() == plain.read_text()) == (keep == 1.0 and set(counts) >= set(plain.read_text().split()))


def test_bpe_words(tmp_path):
    codes = tmp_path / "codes"
    codes.write_text("#version: 0.2\nl o\nlo w</w>\ne r</w>\nn e\n")
    bpe = BPE(codes)
    assert bpe.apply_line("low lower newer a  lo") == "low lo@@ w@@ er ne@@ w@@ er a l@@ o"  # "o</w>" != "o"
    codes.write_text("#version: 0.2\nl o\nbad line here\n")
    with pytest.raises(InputError, match="codes:3"):
        BPE(codes)
