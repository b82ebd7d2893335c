"""Parallel and faster BPE (relm.text.bpe): pooled application, parallel word counting and our merge loop give the
same results as one process and as subword-nmt, on generated corpora full of ties."""
import random
from collections import Counter
from pathlib import Path

import pytest
from subword_nmt.apply_bpe import BPE as RefBPE
from subword_nmt.learn_bpe import learn_bpe as ref_learn_bpe

from relm.cli import main
from relm.errors import InputError
from relm.text import bpe as bpe_mod
from relm.text.bpe import BPE, apply_file, count_words, learn_codes, learn_merges
from relm.text.tokenize import iter_lines

quiet = lambda *a: None


def corpus(path: Path, n_lines: int, seed: int, letters: str = "abcde", n_types: int = 1000) -> Path:
    """Zipfian words of random syllables from a few letters: many equal pair counts, so many ties to break; some
    words are made of the same letters in different ways, so that one symbol can come from two merges."""
    rng = random.Random(seed)
    types = sorted({"".join(rng.choice(letters) for _ in range(rng.randint(1, 7))) for _ in range(n_types)})
    rng.shuffle(types)
    weights = [1 / (r + 1) for r in range(len(types))]
    lines = [" ".join(rng.choices(types, weights, k=rng.randint(0, 12))) for _ in range(n_lines)]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def reference_counts(paths) -> Counter:
    counts: Counter = Counter()
    for p in paths:
        for line in iter_lines(p):
            counts.update(w for w in line.strip(" ").split(" ") if w)
    return counts


def subword_nmt_codes(text: Path, merges: int, min_frequency: int, out: Path) -> str:
    with open(text, encoding="utf-8") as fi, open(out, "w", encoding="utf-8") as fo:
        ref_learn_bpe(fi, fo, merges, min_frequency=min_frequency)
    return out.read_text(encoding="utf-8")


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_parallel_counting_keeps_counts_and_order(tmp_path, monkeypatch, workers):
    """Many small byte ranges, line ends of all three kinds, a BOM, runs of spaces and a second file: the counter
    equals one built line by line with iter_lines, in the same order of first occurrence."""
    monkeypatch.setattr(bpe_mod, "MIN_RANGE_BYTES", 200)
    a = corpus(tmp_path / "a", 800, seed=1)
    text = a.read_text(encoding="utf-8")
    a.write_bytes(("\ufeff" + text.replace("\n", "\r\n", 300).replace("\n", "\r", 10)).encode("utf-8"))
    b = corpus(tmp_path / "b", 500, seed=2, letters="xyzab")
    b.write_text(b.read_text(encoding="utf-8").replace(" ", "   ", 50) + "last line without end  ", encoding="utf-8")
    want = reference_counts([a, b])
    got = count_words([a, b], workers=workers)
    assert list(got.items()) == list(want.items())
    assert "\ufeff" not in "".join(got) and "\r" not in "".join(got)


def test_parallel_counting_names_bad_utf8_line(tmp_path, monkeypatch):
    monkeypatch.setattr(bpe_mod, "MIN_RANGE_BYTES", 100)
    p = corpus(tmp_path / "c", 300, seed=3)
    lines = p.read_bytes().split(b"\n")
    lines[250] += b" \xff"
    p.write_bytes(b"\n".join(lines))
    with pytest.raises(InputError, match=r"c:251"):
        count_words([p], workers=2)


@pytest.mark.parametrize("seed, merges, min_frequency, letters, early", [
    (0, 50, 2, "ab", False),  # two letters: almost every step is a tie
    (1, 400, 2, "abcde", False),  # beyond 100 merges: subword-nmt's pruning and threshold resets take part
    (2, 1000, 1, "abc", True),  # until no pair is left
    (3, 1000, 5, "abcdefg", True),  # until no pair has 5 occurrences
    (4, 300, 3, "aé\u00a0b", False),  # non-ASCII and a no-break space (whitespace to regular expressions) in words
])
def test_learned_codes_equal_subword_nmt(tmp_path, seed, merges, min_frequency, letters, early):
    text = corpus(tmp_path / "text", 1500, seed=seed, letters=letters)
    want = subword_nmt_codes(text, merges, min_frequency, tmp_path / "ref.codes")
    for workers in (1, 2):
        out = tmp_path / f"relm{workers}.codes"
        n = learn_codes([text], out, merges, min_frequency=min_frequency, log=quiet, workers=workers)
        assert out.read_text(encoding="utf-8") == want
        assert n == want.count("\n") - 1
    assert (n < merges) == early


def test_learning_is_deterministic_and_joint(tmp_path):
    """Same codes over runs and worker counts; two inputs are learned as their concatenation."""
    a, b = corpus(tmp_path / "a", 700, seed=5), corpus(tmp_path / "b", 700, seed=6, letters="cdefg")
    both = tmp_path / "both"
    both.write_text(a.read_text() + b.read_text())
    want = subword_nmt_codes(both, 250, 2, tmp_path / "ref.codes")
    for run, workers in enumerate((1, 2, 3, 2)):
        out = tmp_path / f"codes{run}"
        learn_codes([a, b], out, 250, log=quiet, workers=workers)
        assert out.read_text() == want


def test_learning_without_pairs(tmp_path):
    """Only one-letter words (subword-nmt fails on them): no merge, a valid codes file."""
    text = tmp_path / "text"
    text.write_text("a b c\nb a\n\n")
    assert learn_merges(count_words([text]), 10) == []
    assert learn_codes([text], tmp_path / "codes", 10, log=quiet) == 0
    assert (tmp_path / "codes").read_text() == "#version: 0.2\n"


@pytest.mark.parametrize("restricted", [False, True])
def test_pooled_apply_equals_one_process_and_subword_nmt(tmp_path, restricted):
    train = corpus(tmp_path / "train", 1500, seed=7, letters="abcdef")
    codes = tmp_path / "codes"
    learn_codes([train], codes, 300, log=quiet)
    text = corpus(tmp_path / "text", 3000, seed=8, letters="abcdefg")  # "g": words the codes never saw
    vocab, kept = None, None
    if restricted:
        apply_file(codes, train, tmp_path / "train.bpe", log=quiet)
        counts = Counter((tmp_path / "train.bpe").read_text().split())
        kept = {t for i, t in enumerate(sorted(counts)) if i % 3}
        vocab = tmp_path / "vocab"
        vocab.write_text("".join(f"{t} {counts[t]}\n" for t in sorted(kept)))
    outs = []
    for workers, chunk_bytes in ((1, 1 << 20), (2, 997), (3, 10_000), (2, 1)):  # 1 byte: a line per part
        out = tmp_path / f"out{workers}.{chunk_bytes}"
        assert apply_file(codes, text, out, vocab=vocab, log=quiet, workers=workers, chunk_bytes=chunk_bytes) == 3000
        outs.append(out.read_bytes())
    assert all(o == outs[0] for o in outs)
    with open(codes, encoding="utf-8") as f:
        ref = RefBPE(f, vocab=kept)
    lines = text.read_text().split("\n")[:-1]
    assert outs[0].decode().split("\n")[:-1] == [ref.process_line(line) for line in lines]
    assert outs[0].count(b"@@ ") > 1000


def test_pooled_apply_reads_lines_as_iter_lines(tmp_path):
    """BOM, "\\r\\n" and bare "\\r" line ends, empty lines, a last line without its end: one output line per line that
    iter_lines reads; bad UTF-8 is an InputError naming the line, as in one process."""
    codes = tmp_path / "codes"
    codes.write_text("#version: 0.2\nl o\nlo w</w>\ne r</w>\n")
    text = tmp_path / "text"
    text.write_bytes("\ufefflow lower\r\n\r\nlower  low\rlo\n\nlow".encode() * 50)
    lines = list(iter_lines(text))
    assert len(lines) == 251 and "" in lines
    want = "".join(BPE(codes).apply_line(line) + "\n" for line in lines)
    for workers, chunk_bytes in ((1, 1 << 20), (2, 1), (2, 7)):
        out = tmp_path / f"out{workers}.{chunk_bytes}"
        assert apply_file(codes, text, out, log=quiet, workers=workers, chunk_bytes=chunk_bytes) == 251
        assert out.read_text() == want
    text.write_bytes(b"low\n" * 100 + b"lo\xffw\n" + b"low\n" * 100)
    with pytest.raises(InputError, match=r"text:101"):
        apply_file(codes, text, tmp_path / "bad", log=quiet, workers=2, chunk_bytes=10)
    assert not (tmp_path / "bad").exists()


def test_cli_threads(tmp_path):
    text = corpus(tmp_path / "text", 1000, seed=9)
    codes = tmp_path / "codes"
    main(["bpe", "learn", "--inputs", str(text), "--codes", str(codes), "--merges", "100", "--threads", "2"])
    assert codes.read_text() == subword_nmt_codes(text, 100, 2, tmp_path / "ref.codes")
    for threads in ("1", "2"):
        main(["bpe", "apply", "--codes", str(codes), "--input", str(text), "--output", str(tmp_path / threads),
              "--threads", threads])
    assert (tmp_path / "1").read_bytes() == (tmp_path / "2").read_bytes()
