"""The benchmark harness (bench/): generated text, fits and projection, one measurement per fresh process, ratios,
the Markdown report; and what the cases rely on (same output as their reference, same parameter count)."""
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import torch

from bench.cases import mlm_step, tokenize
from bench.harness import (MAX_WORDS, MIN_WORDS, add_ratios, fit_linear, fit_power, markdown, project_linear, run,
                           synthetic_text)
from relm.config import ModelConfig
from relm.model.transformer import TransformerModel

REPO = Path(__file__).resolve().parents[1]
TINY_CASE = '''
"""A tiny case for the harness tests: "relm" keeps 5 MB, "reference" 40 MB in a forked child."""
import multiprocessing

SIZES = {"small": {"n": 100}, "large": {"n": 300}}


def prepare(size, work):
    work.mkdir(parents=True, exist_ok=True)
    (work / f"in.{size}").write_text("x" * SIZES[size]["n"])


def _touch(mb):
    block = bytearray(mb << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return len(block)


def small(size, work):
    n = len((work / f"in.{size}").read_text())
    _touch(5)
    return {"items": n, "unit": "lines", "digest": "a"}


def in_child(size, work):
    n = len((work / f"in.{size}").read_text())
    p = multiprocessing.get_context("fork").Process(target=_touch, args=(40,))
    p.start()
    p.join()
    return {"items": n, "unit": "lines", "digest": "b", "extra": 7}


CASES = {"tiny": {"relm": small, "reference": in_child}}
'''


def test_synthetic_text_is_deterministic_and_zipfian(tmp_path):
    a = synthetic_text(tmp_path / "a.txt", 2000, seed=5, vocab_words=5000)
    b = synthetic_text(tmp_path / "b.txt", 2000, seed=5, vocab_words=5000)
    c = synthetic_text(tmp_path / "c.txt", 2000, seed=6, vocab_words=5000)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    lines = a.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2000 and not (tmp_path / "a.txt.tmp").exists()
    assert all(MIN_WORDS <= len(line.split()) <= MAX_WORDS and line[-1] in ".?!" and not line[0].islower()
               for line in lines)
    words = [w.strip(',.?!"').lower() for line in lines for w in line.split()]
    counts = sorted(Counter(words).values(), reverse=True)
    assert counts[0] > 20 * counts[len(counts) // 2]  # a few words are very frequent
    # distinct words grow sublinearly with the tokens read (Heaps' law)
    ns = [2000, 8000, 32000]
    _, beta = fit_power(ns, [len(set(words[:n])) for n in ns])
    assert 0.3 < beta < 0.95


def test_fits():
    assert fit_linear([1, 3], [5, 11]) == pytest.approx((2, 3))
    assert fit_linear([0, 1, 2], [1, 2, 4]) == pytest.approx((5 / 6, 1.5))  # least squares
    k, beta = fit_power([10, 1000], [2 * 10**0.5, 2 * 1000**0.5])
    assert (k, beta) == pytest.approx((2, 0.5))
    with pytest.raises(ValueError):
        fit_linear([2, 2], [1, 3])


def test_project_linear():
    rows = [dict(case="c", impl="relm", items=10, sentences=100, wall_s=3.0, peak_mb=50.0),
            dict(case="c", impl="relm", items=40, sentences=400, wall_s=9.0, timed_s=6.0, peak_mb=80.0),
            dict(case="c", impl="reference", items=10, wall_s=1.0, peak_mb=10.0)]  # one size only: left out
    p = project_linear(rows, 1000)
    assert "linear" in p["model"]
    (r,) = p["projections"]
    # seconds: (100, 3) and (400, 6: the timed part) -> 2 + 0.01 * n; memory (100, 50), (400, 80) -> 40 + 0.1 * n
    assert (r["case"], r["impl"]) == ("c", "relm")
    assert r["seconds"] == pytest.approx(12) and r["peak_mb"] == pytest.approx(140)


def test_ratios():
    rows = [dict(case="c", size="small", impl="reference", items_per_s=100.0, peak_mb=40.0, digest="x"),
            dict(case="c", size="small", impl="relm", items_per_s=250.0, peak_mb=10.0, digest="x"),
            dict(case="c", size="large", impl="relm", items_per_s=1.0, peak_mb=1.0)]  # no reference at this size
    add_ratios(rows)
    assert rows[1]["speed_vs_reference"] == pytest.approx(2.5)
    assert rows[1]["memory_vs_reference"] == pytest.approx(0.25) and rows[1]["same_output"] is True
    assert "speed_vs_reference" not in rows[2]


def test_harness_runs_each_case_in_a_subprocess(tmp_path, monkeypatch):
    pkg = tmp_path / "benchtest_cases"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "tiny.py").write_text(textwrap.dedent(TINY_CASE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    report = run(("small", "large"), None, tmp_path / "work", 1, 1000.0, log=lambda s: None,
                 modules=["benchtest_cases.tiny"])
    assert report["machine"]["cores"] >= 1 and report["versions"]["torch"] == torch.__version__
    assert len(report["load_before"]) == len(report["load_after"]) == 3
    rows = {(r["impl"], r["size"]): r for r in report["rows"]}
    assert set(rows) == {(i, s) for i in ("relm", "reference") for s in ("small", "large")}
    for (impl, size), r in rows.items():
        assert "error" not in r, r
        assert r["items"] == {"small": 100, "large": 300}[size] and r["unit"] == "lines"
        assert r["wall_s"] > 0 and r["cpu_s"] >= 0 and r["baseline_mb"] > 0
        assert r["items_per_s"] == pytest.approx(r["items"] / r["wall_s"])
    small, ref = rows["relm", "small"], rows["reference", "small"]
    assert ref["extra"] == 7  # the function's own figures are kept
    if small["peak_reset"]:
        assert 4 <= small["peak_mb"] < 30
    assert ref["peak_mb_above_baseline"] < 30 <= ref["peak_mb"]  # the child's 40 MB count, the parent's do not
    assert small["memory_vs_reference"] == pytest.approx(small["peak_mb"] / ref["peak_mb"])
    assert small["speed_vs_reference"] == pytest.approx(small["items_per_s"] / ref["items_per_s"])
    assert small["same_output"] is False
    proj = {p["impl"]: p for p in report["projections"]}
    a, b = fit_linear([100, 300], [rows["relm", s]["wall_s"] for s in ("small", "large")])
    assert proj["relm"]["seconds"] == pytest.approx(a + b * 1000) and proj["relm"]["n"] == 1000

    table = markdown(report)
    assert "| tiny | small | relm | 100 | lines |" in table and "| tiny | large | reference |" in table
    assert "1 (ref)" in table and "**no**" in table  # different digests are flagged
    assert "Projection to 1,000 sentences" in table and "| tiny | relm |" in table
    assert report["machine"]["cpu"] in table and "load average" in table


def test_a_failing_case_is_reported_not_fatal(tmp_path, monkeypatch):
    pkg = tmp_path / "benchtest_bad"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "bad.py").write_text(textwrap.dedent('''
        SIZES = {"small": {}}
        def prepare(size, work): pass
        def boom(size, work): raise RuntimeError("no data here")
        CASES = {"bad": {"reference": boom}}
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    report = run(("small",), None, tmp_path / "work", 1, None, log=lambda s: None, modules=["benchtest_bad.bad"])
    (row,) = report["rows"]
    assert "no data here" in row["error"]
    assert "Failed:" in markdown(report)


def test_tokenize_case_matches_its_reference(tmp_path):
    synthetic_text(tmp_path / "raw.small.txt", 300, seed=1)
    out = [fn("small", tmp_path) for fn in tokenize.CASES["tokenize"].values()]
    assert [r["items"] for r in out] == [300] * 3
    assert len({r["digest"] for r in out}) == 1


def test_mlm_step_models_have_the_counted_parameters():
    n = mlm_step.parameters(32, 2)
    relm = TransformerModel(ModelConfig(dim=32, n_layers=2, n_heads=8, max_positions=mlm_step.BPTT),
                            mlm_step.N_WORDS, 1, is_decoder=False)
    bare = mlm_step.BareMLM(32, 2)
    assert sum(p.numel() for p in relm.parameters()) == sum(p.numel() for p in bare.parameters()) == n


def test_word_translation_accuracy_of_embeddings(tmp_path):
    """bench.word_translation scores 1.0 when each test word's row is its translation's row (plus a little noise),
    near chance for unrelated rows; LMR forms spelled like an HMR word are not test words."""
    import yaml

    from bench.word_translation import build_pair, evaluate, lexicon
    from relm.model.checkpoint import save_model
    from relm.tokens import SPECIAL_WORDS

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    synth, lmr, hmr = build_pair(config, "lx-hx")
    pairs = lexicon(synth)
    chosen, seen = [], set()
    for lw, hw, shared in pairs:
        if not shared and lw not in seen and hw not in seen and len(chosen) < 40:
            chosen.append((lw, hw))
            seen |= {lw, hw}
    words = SPECIAL_WORDS + [w for pair in chosen for w in pair]
    cfg = ModelConfig(dim=32, n_layers=1, n_heads=2)
    torch.manual_seed(0)
    results = {}
    for name, aligned in (("aligned", True), ("random", False)):
        model = TransformerModel(cfg, len(words), 2, False)
        with torch.no_grad():
            emb = model.embeddings.weight
            for k in range(len(chosen)):
                h = len(SPECIAL_WORDS) + 2 * k + 1
                if aligned:
                    emb[h - 1] = emb[h] + 0.01 * torch.randn(32)
        save_model(tmp_path / f"{name}.pt", "mlm", {"model": model}, cfg, [hmr, lmr], words, [1] * len(words), {})
        results[name] = evaluate(str(tmp_path / f"{name}.pt"), pairs, lmr)
    assert results["aligned"]["n_test"] == 40 and results["aligned"]["acc@1"] == 1.0
    assert results["random"]["acc@1"] < 0.2
