"""score_file (sacreBLEU, chrF, tokenized BLEU, copy baseline) and the paired bootstrap test."""
import json
import random

import pytest

from relm.evaluate.score import paired_bootstrap, paired_bootstrap_files, score_file, tokenize_lines

REFS = [
    "The cat sat on the mat, didn't it?",
    "Prices rose by 3.5% in March.",
    "\"Hello,\" she said.",
    "A quick brown fox jumps over the lazy dog.",
]
META = {"pair": "mk-en", "system": "relm", "direction": "mk-en", "split": "test"}


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_identical_is_100_with_signatures(tmp_path):
    ref = write(tmp_path / "ref", REFS)
    hyp = write(tmp_path / "hyp", REFS)
    out = tmp_path / "scores" / "s.json"
    r = score_file(hyp, ref, "en", meta={**META, "pair": "lx-hx"}, out=out)
    assert json.loads(out.read_text()) == r
    for m in ("bleu", "chrf++", "tok_bleu"):
        assert r["metrics"][m]["score"] == pytest.approx(100.0)
    assert "tok:13a" in r["metrics"]["bleu"]["signature"] and "version:2." in r["metrics"]["bleu"]["signature"]
    assert "nc:6" in r["metrics"]["chrf++"]["signature"] and "nw:2" in r["metrics"]["chrf++"]["signature"]
    sig = r["metrics"]["tok_bleu"]["signature"]
    assert "tok:none" in sig and "smooth:none" in sig and "pretok:relm-moses-en" in sig
    assert (r["pair"], r["system"], r["direction"], r["split"]) == ("lx-hx", "relm", "mk-en", "test")
    assert (r["src_lang"], r["tgt_lang"], r["n_lines"]) == ("mk", "en", 4)
    assert r["copy_bleu"] is None and r["hyp"] == str(hyp) and r["ref"] == str(ref)


def test_copy_baseline_and_partial_match(tmp_path):
    ref = write(tmp_path / "ref", REFS)
    src = write(tmp_path / "src", ["mačka sedi", "cene", "zdravo", "lisica"])
    hyp = write(tmp_path / "hyp", [REFS[0], "Prices fell in May.", "", REFS[3]])
    r = score_file(hyp, ref, "en", src=src, meta=META)
    assert 0 < r["metrics"]["bleu"]["score"] < 100
    assert r["copy_bleu"] == pytest.approx(0.0, abs=1.0)
    assert r["src"] == str(src)


def test_tokenized_bleu_is_on_moses_tokens(tmp_path):
    # detokenized BLEU with 13a and tokenized BLEU differ in how "didn't" is split; both must see the same words
    ref = write(tmp_path / "ref", ["Don't stop, it's fine."])
    hyp = write(tmp_path / "hyp", ["Don't stop, it's fine."])
    assert tokenize_lines(["Don't stop."], "en") == ["Don 't stop ."]
    r = score_file(hyp, ref, "en", meta=META)
    assert r["metrics"]["tok_bleu"]["score"] == pytest.approx(100.0)


@pytest.mark.parametrize("which", ["hyp", "src"])
def test_line_count_mismatch_names_files(tmp_path, which):
    ref = write(tmp_path / "ref.txt", REFS)
    hyp = write(tmp_path / "hyp.txt", REFS[:3] if which == "hyp" else REFS)
    src = write(tmp_path / "src.txt", REFS[:2]) if which == "src" else None
    with pytest.raises(ValueError) as e:
        score_file(hyp, ref, "en", src=src, meta=META)
    msg = str(e.value)
    assert "ref.txt" in msg and f"{which}.txt" in msg and "4" in msg and ("3" if which == "hyp" else "2") in msg


def test_direction_must_match_target(tmp_path):
    ref = write(tmp_path / "ref", REFS)
    with pytest.raises(ValueError, match="target language 'mk'"):
        score_file(ref, ref, "mk", meta={**META, "direction": "mk-en"})


def _corpus(n=150, seed=0):
    rnd = random.Random(seed)
    words = "the a cat dog sat ran on under mat house red blue big small old new".split()
    refs = [" ".join(rnd.choice(words) for _ in range(12)) + " ." for _ in range(n)]
    good = [r if i % 4 else " ".join(r.split()[:6]) for i, r in enumerate(refs)]
    bad = [" ".join(rnd.choice(words) for _ in range(12)) + " ." for _ in range(n)]
    return refs, good, bad


@pytest.mark.parametrize("metric", ["bleu", "chrf++", "tok_bleu"])
def test_bootstrap_clearly_better_is_significant(metric):
    refs, good, bad = _corpus()
    sig = paired_bootstrap(good, bad, refs, n_samples=300, metric=metric, tgt_lang="en")
    assert sig.p_value < 0.05
    assert sig.score > sig.baseline
    assert "bs:300" in sig.signature and "seed:12345" in sig.signature


def test_bootstrap_identical_and_close_not_significant():
    refs, good, bad = _corpus()
    assert paired_bootstrap(bad, bad, refs, n_samples=300).p_value == 1.0
    close = list(bad)
    close[0] = refs[0]  # one line better out of 150
    assert paired_bootstrap(close, bad, refs, n_samples=300).p_value > 0.05


def test_bootstrap_is_seeded_and_checks_lengths(tmp_path):
    refs, good, bad = _corpus(n=60)
    a = paired_bootstrap(good, bad, refs, n_samples=200, seed=7, metric="chrf++")
    b = paired_bootstrap(good, bad, refs, n_samples=200, seed=7, metric="chrf++")
    assert a == b
    with pytest.raises(ValueError, match="line count"):
        paired_bootstrap(good[:-1], bad, refs)
    ref, hs, hb = write(tmp_path / "r", refs), write(tmp_path / "s", good), write(tmp_path / "b", bad[:-1])
    with pytest.raises(ValueError, match=r"b has 59 lines"):
        paired_bootstrap_files(hs, hb, ref)
