"""Training: batches, MLM and UNMT runs on tiny synthetic corpora, resume after SIGKILL / SIGUSR1 / SIGTERM / SIGHUP /
SIGINT, the run-directory lock, stale runs (changed config, changed input content, forced reruns, budgets), corrupt
checkpoints, DDP with 2 CPU processes (gloo), RE-LM vocabulary extension, adapters, non-finite losses and metrics."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from relm.config import MLMConfig, UNMTConfig, from_dict, merge
from relm.data.batches import SentenceBatches, StreamBatches, parallel_eval_batches
from relm.data.corpus import Corpus, binarize
from relm.data.dictionary import Dictionary
from relm.errors import CheckpointError
from relm.model.checkpoint import load_model, safe_load, save_model
from relm.model.transformer import ADAPTER_TRAINABLE_PREFIXES, TransformerModel
from relm.text.vocab import count_vocab, extend_vocab
from relm.errors import NonFiniteLossError
from relm.train.devices import dist_from_env
from relm.train.loop import Trainer
from relm.train.mlm import MLMNet, train_mlm
from relm.files import sha256_file
from relm.train.fingerprint import DigestCache
from relm.train.resume import EXIT_REQUEUE, EXIT_SIGINT, RunDirBusyError, budget_verdict
from relm.train.unmt import train_unmt

QUIET = lambda *a, **k: None  # noqa: E731
MODEL = {"dim": 32, "n_layers": 2, "n_heads": 4, "dropout": 0.1, "attention_dropout": 0.1, "pre_norm": True}
MLM = {"model": MODEL, "optim": {"lr": 1e-3}, "bptt": 16, "batch_size": 8,
       "run": {"epoch_size": 80, "max_epochs": 3, "threads": 1, "log_every": 5, "checkpoint_every": 4,
               "validation_metrics": "_valid_mlm_ppl"}}


def mlm_cfg(**over) -> MLMConfig:
    return from_dict(MLMConfig, merge(MLM, over))


# --- tiny corpora ---------------------------------------------------------------------------------------------------

def write_lang(d: Path, lg: str, seed: int, n_train=600, n_eval=80, V=30, offset=0):
    """Sentences of consecutive words (`{lg}{k}`, k mod V): easy to learn. Valid/test lines are the same word ids in
    every language (line-aligned "translations"); train lines are drawn independently per language."""
    for split, n in (("train", n_train), ("valid", n_eval), ("test", n_eval)):
        r = np.random.default_rng([seed, len(split), offset if split == "train" else 0])
        lines = []
        for _ in range(n):
            s, length = r.integers(V), r.integers(3, 12)
            lines.append(" ".join(f"{lg}{(s + k) % V}" for k in range(length)))
        (d / f"{split}.{lg}").write_text("\n".join(lines) + "\n")


def binarize_all(d: Path, langs, vocab: Path, tag="") -> dict:
    out = {}
    for split in ("train", "valid", "test"):
        for lg in langs:
            j = d / f"{split}.{lg}{tag}.json"
            binarize(d / f"{split}.{lg}", vocab, j, lg, log=QUIET)
            out.setdefault(split, {})[lg] = str(j)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    for i, lg in enumerate(("hx", "lx")):
        write_lang(d, lg, seed=0, offset=i)
    count_vocab([d / "train.hx", d / "train.lx"], d / "vocab")
    return {"dir": d, "vocab": str(d / "vocab"), **binarize_all(d, ("hx", "lx"), d / "vocab")}


def metrics_of(path) -> list[dict]:
    lines = Path(path).read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("time_s", "cpu_s")} for line in lines]


# --- batches --------------------------------------------------------------------------------------------------------

def test_stream_batches_hold_every_sentence(data):
    c = Corpus(data["valid"]["hx"])
    s = StreamBatches(c, bs=3, bptt=7, shuffle=False)
    x = torch.cat([b for b, _ in s.eval_batches()], dim=1)  # [3, n_batches*7]
    assert x.shape == (3, s.n_batches * 7) and (s.batch(0)[1] == 7).all()
    flat = x.reshape(-1).numpy()
    expect = np.concatenate([[1]] + [np.append(c[i], 1) for i in range(len(c))])
    assert (flat[-len(expect):] == expect).all() and (flat[: len(flat) - len(expect)] == 1).all()


def test_stream_iterator_reshuffles_and_resumes(data):
    c = Corpus(data["train"]["hx"])
    a = StreamBatches(c, bs=4, bptt=8, seed=3)
    n = len(a)
    first = [a.next()[0] for _ in range(n)]
    second = [a.next()[0] for _ in range(n)]
    key = lambda bs: sorted(b.numpy().tobytes() for b in bs)  # noqa: E731
    assert key(first) == key(second)  # every batch once per pass
    assert [b.numpy().tobytes() for b in first] != [b.numpy().tobytes() for b in second]  # new order
    b = StreamBatches(c, bs=4, bptt=8, seed=3)
    b.load_state({"epoch": 1, "pos": 5})
    assert all(torch.equal(b.next()[0], second[5 + i]) for i in range(n - 5))


@pytest.mark.parametrize("tpb, max_len, max_bs", [(60, 100, 0), (25, 6, 0), (-1, 0, 0), (200, 100, 4)])
def test_sentence_batches(data, tpb, max_len, max_bs):
    c = Corpus(data["train"]["lx"])
    it = SentenceBatches(c, tokens_per_batch=tpb, batch_size=16, max_len=max_len, seed=1, max_batch_size=max_bs)
    n_batches = it._pass(0)
    seen = []
    for _ in range(n_batches):
        x, lengths = it.next()
        assert (x[:, 0] == 1).all() and (x[torch.arange(len(x)), lengths - 1] == 1).all()
        assert (x == 2).sum() == (x.size(1) * len(x) - lengths.sum())  # padding exactly after EOS
        assert lengths.max() == x.size(1)
        if max_len:
            assert (lengths - 2).max() <= max_len
        if tpb == -1:
            assert len(x) <= 16
        if max_bs:
            assert len(x) <= max_bs
        seen += [x[i, 1: lengths[i] - 1].numpy().tobytes() for i in range(len(x))]
    kept = [i for i in range(len(c)) if 0 < len(c[i]) <= (max_len or 10**9)]
    if not max_bs:  # one pass = every kept sentence exactly once
        assert sorted(seen) == sorted(np.asarray(c[i], dtype=np.int64).tobytes() for i in kept)
    state = it.state()
    nxt = it.next()[0]
    it2 = SentenceBatches(c, tokens_per_batch=tpb, batch_size=16, max_len=max_len, seed=1, max_batch_size=max_bs)
    it2.load_state(state)
    assert torch.equal(it2.next()[0], nxt)


def test_parallel_eval_batches_filter_and_align(data):
    a, b = Corpus(data["valid"]["hx"]), Corpus(data["valid"]["lx"])
    n = 0
    for x1, l1, x2, l2, idx in parallel_eval_batches(a, b, 7, max_len=8):
        assert len(x1) == len(x2) == len(idx) <= 7 and (l1 - 2).max() <= 8 and (l2 - 2).max() <= 8
        for r, i in enumerate(idx):
            assert x1[r, 1: l1[r] - 1].tolist() == a[i].tolist() and x2[r, 1: l2[r] - 1].tolist() == b[i].tolist()
        n += len(idx)
    assert n == sum(1 for i in range(len(a)) if len(a[i]) <= 8 and len(b[i]) <= 8)


# --- MLM ------------------------------------------------------------------------------------------------------------

def test_mlm_learns_and_writes_outputs(data, tmp_path):
    cfg = mlm_cfg(run={"max_epochs": 4, "epoch_size": 160, "stopping_criterion": "_valid_hx_mlm_ppl,5"})
    res = train_mlm(cfg, str(tmp_path / "run"), data["vocab"], data["train"], data["valid"], data["test"],
                    out=str(tmp_path / "out.pt"), metrics_out=str(tmp_path / "m.jsonl"), log=QUIET)
    hist = metrics_of(tmp_path / "m.jsonl")
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3] and res["step"] == hist[-1]["step"] == 4 * 160 // 8
    for lg in ("hx", "lx"):
        assert hist[-1][f"valid_{lg}_mlm_ppl"] < 0.7 * hist[0][f"valid_{lg}_mlm_ppl"]
        assert {f"test_{lg}_mlm_ppl", f"test_{lg}_mlm_acc", "valid_mlm_ppl"} <= set(hist[-1])
        assert hist[-1][f"train_mlm_{lg}_loss"] < hist[0][f"train_mlm_{lg}_loss"]  # the epoch's mean training loss
    cpu = [json.loads(line)["cpu_s"] for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert 0 < cpu[0] < cpu[-1]
    loaded = load_model(tmp_path / "out.pt")
    assert loaded.kind == "mlm" and loaded.langs == ["hx", "lx"]
    assert loaded.words == Dictionary.read_vocab(data["vocab"]).words
    best = min(h["valid_mlm_ppl"] for h in hist)
    assert res["best"]["valid_mlm_ppl"] == best
    assert (tmp_path / "run" / "config.yaml").is_file() and (tmp_path / "run" / "best-valid_mlm_ppl.pt").is_file()
    ck = safe_load(tmp_path / "run" / "checkpoint.pt")
    assert ck["trainer"]["done"] and ck["trainer"]["step"] == res["step"]
    assert "optimizer" in ck and len(ck["ranks"]) == 1


def test_lambda_zero_makes_no_update(data, tmp_path):
    cfg = mlm_cfg(lambda_mlm="0:0,1:1", mlm_steps=["hx"], run={"max_epochs": 1, "epoch_size": 16})
    res = train_mlm(cfg, str(tmp_path / "r"), data["vocab"], data["train"], data["valid"], log=QUIET)
    assert res["step"] == 2 and safe_load(tmp_path / "r" / "checkpoint.pt")["trainer"]["n_iter"] == 3
    with pytest.raises(ValueError, match="lambda_mlm '0:1,2:0' is 0 from iteration 2"):
        train_mlm(mlm_cfg(lambda_mlm="0:1,2:0", mlm_steps=["hx"]), str(tmp_path / "r2"), data["vocab"],
                  data["train"], data["valid"], log=QUIET)


# --- subprocess runs: SIGKILL / signals / determinism ----------------------------------------------------------------

RUNNER = """
import json, sys
from relm.config import MLMConfig, from_dict
from relm.train.mlm import train_mlm
a = json.loads(sys.argv[1])
train_mlm(from_dict(MLMConfig, a["cfg"]), a["run_dir"], a["vocab"], a["train"], a["valid"], a["test"],
          out=a["out"], metrics_out=a["metrics"], log=lambda m: print(m, flush=True))
"""
LONG = merge(MLM, {"run": {"max_epochs": 6, "epoch_size": 160, "checkpoint_every": 4}})


def launch(data, tmp_path, name, env=None):
    args = {"cfg": LONG, "run_dir": str(tmp_path / name), "vocab": data["vocab"], "train": data["train"],
            "valid": data["valid"], "test": data["test"], "out": str(tmp_path / f"{name}.pt"),
            "metrics": str(tmp_path / f"{name}.jsonl")}
    return subprocess.Popen([sys.executable, "-c", RUNNER, json.dumps(args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env or clean_env())


def wait_for_checkpoint(run_dir: Path, proc, timeout=120):
    t = time.time()
    while not (run_dir / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.time() - t < timeout
        time.sleep(0.01)


@pytest.fixture(scope="module")
def reference_run(data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    p = launch(data, tmp, "ref")
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    return metrics_of(tmp / "ref.jsonl")


def test_sigkill_then_resume_is_deterministic(data, tmp_path, reference_run):
    p = launch(data, tmp_path, "run")
    wait_for_checkpoint(tmp_path / "run", p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    step = safe_load(tmp_path / "run" / "checkpoint.pt")["trainer"]["step"]
    assert 0 < step < reference_run[-1]["step"]
    p = launch(data, tmp_path, "run")
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    assert f"resuming from {tmp_path / 'run' / 'checkpoint.pt'}: step {step}" in out
    assert metrics_of(tmp_path / "run.jsonl") == reference_run


@pytest.mark.parametrize("sig, status", [(signal.SIGUSR1, EXIT_REQUEUE), (signal.SIGTERM, EXIT_REQUEUE),
                                         (signal.SIGHUP, EXIT_REQUEUE), (signal.SIGINT, EXIT_SIGINT)],
                         ids=["SIGUSR1", "SIGTERM", "SIGHUP", "SIGINT"])
def test_signal_checkpoints_and_exits(data, tmp_path, reference_run, sig, status):
    p = launch(data, tmp_path, "run")
    wait_for_checkpoint(tmp_path / "run", p)
    if sig == signal.SIGTERM:  # a second trainer on the same run directory is refused while the first one runs
        p.send_signal(signal.SIGSTOP)  # (paused: it would finish before the second one has started)
        second = launch(data, tmp_path, "run")
        out2, _ = second.communicate(timeout=120)
        p.send_signal(signal.SIGCONT)
        assert second.returncode != 0 and f"is in use by PID {p.pid}" in out2, out2
        assert str(tmp_path / "run") in out2
    p.send_signal(sig)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == status, out
    assert f"signal {sig.name}" in out and f"exiting with status {status}" in out and "Traceback" not in out
    ck = safe_load(tmp_path / "run" / "checkpoint.pt")
    assert not ck["trainer"]["done"] and ck["trainer"]["step"] > 0
    p = launch(data, tmp_path, "run")
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0 and "resuming from" in out, out
    assert metrics_of(tmp_path / "run.jsonl") == reference_run


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_on_cpu(data, tmp_path, amp):
    logs = []
    res = train_mlm(mlm_cfg(run={"amp": amp, "max_epochs": 1, "epoch_size": 48}), str(tmp_path / "r"), data["vocab"],
                    data["train"], data["valid"], log=logs.append)
    assert any(f"amp {amp}" in m for m in logs) and res["step"] == 6
    assert np.isfinite(res["last"]["valid_mlm_ppl"])


# --- run directory handling -----------------------------------------------------------------------------------------

def small_run(data, run_dir, **over):
    cfg = mlm_cfg(**merge({"run": {"max_epochs": 1, "epoch_size": 32}}, over))
    logs = []
    res = train_mlm(cfg, str(run_dir), data["vocab"], data["train"], data["valid"], log=logs.append)
    return res, logs


def test_rerun_resumes_finished_run_and_changed_config_goes_stale(data, tmp_path):
    run = tmp_path / "run"
    res1, _ = small_run(data, run)
    res2, logs = small_run(data, run)  # same config: nothing to do, outputs again
    assert res2["step"] == res1["step"] and any("already finished" in m for m in logs)
    res3, logs = small_run(data, run, optim={"lr": 5e-4})
    assert any("stale-1" in m and "optim.lr" in m for m in logs)
    assert (run / "checkpoint.pt.stale-1").is_file() and (run / "config.yaml.stale-1").is_file()
    assert (run / "best-valid_mlm_ppl.pt.stale-1").is_file()
    assert safe_load(run / "checkpoint.pt")["config"]["optim"]["lr"] == 5e-4
    small_run(data, run, optim={"lr": 2e-4})
    assert (run / "checkpoint.pt.stale-2").is_file() and (run / "checkpoint.pt.stale-1").is_file()


@pytest.mark.parametrize("now, stale", [("random", False), ("zero", True)])
def test_a_setting_newer_than_the_checkpoint_counts_at_its_default(data, tmp_path, now, stale):
    """A checkpoint written before a setting existed (here: new_lang_emb, default random) resumes when the run keeps
    the default, and is stale when the run sets another value."""
    run = tmp_path / "run"
    res1, _ = small_run(data, run)
    ck = safe_load(run / "checkpoint.pt")
    del ck["config"]["new_lang_emb"]
    torch.save(ck, run / "checkpoint.pt")
    res2, logs = small_run(data, run, new_lang_emb=now)
    assert any("already finished" in m for m in logs) != stale, logs
    assert any("stale-1" in m and "new_lang_emb" in m for m in logs) == stale, logs


def test_corrupt_checkpoint_falls_back_to_the_previous_one(data, tmp_path):
    run, over = tmp_path / "run", {"run": {"epoch_size": 64, "checkpoint_every": 2}}
    first, _ = small_run(data, run, **over)
    prev = run / "checkpoint.prev.pt"
    prev_step = safe_load(prev)["trainer"]["step"]
    ck = run / "checkpoint.pt"
    ck.write_bytes(ck.read_bytes()[:1000])
    res, logs = small_run(data, run, **over)
    assert any("WARNING" in m and str(ck) in m and "falling back" in m for m in logs), logs
    assert any(f"resuming from {ck}: step {prev_step}" in m for m in logs), logs
    assert (run / "checkpoint.pt.corrupt").stat().st_size == 1000 and safe_load(ck)["trainer"]["done"]
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("time_s", "cpu_s")} for r in h]  # noqa: E731
    assert strip(res["history"]) == strip(first["history"])  # resumed from the previous state, same result
    # both unusable: one error naming both files, and nothing is touched
    ck.write_bytes(b"garbage")
    prev.write_bytes(prev.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=re.escape(str(ck)) + ".*" + re.escape(str(prev))) as e:
        small_run(data, run, **over)
    assert "\n" not in str(e.value) and ck.read_bytes() == b"garbage"


# --- what a run consumes: content, not paths; forced reruns; budgets --------------------------------------------------

def make_data(d: Path, seed=0, extra_words=0) -> dict:
    """Corpora and vocabulary like the `data` fixture, in a directory of the test's own (to be changed in place)."""
    d.mkdir(parents=True, exist_ok=True)
    for i, lg in enumerate(("hx", "lx")):
        write_lang(d, lg, seed=seed, offset=i)
    texts = [d / "train.hx", d / "train.lx"]
    if extra_words:  # words that only enlarge the vocabulary
        (d / "extra.txt").write_text(" ".join(f"zz{k}" for k in range(extra_words)) + "\n")
        texts.append(d / "extra.txt")
    count_vocab(texts, d / "vocab")
    return {"dir": d, "vocab": str(d / "vocab"), **binarize_all(d, ("hx", "lx"), d / "vocab")}


def out_run(data, tmp_path, name="run", init=None, **over):
    """A one-epoch MLM run that writes --out and --metrics, as a workflow job does; (result, log lines)."""
    cfg = mlm_cfg(**merge({"run": {"max_epochs": 1, "epoch_size": 32}}, over))
    logs = []
    res = train_mlm(cfg, str(tmp_path / name), data["vocab"], data["train"], data["valid"], init=init,
                    out=str(tmp_path / f"{name}.pt"), metrics_out=str(tmp_path / f"{name}.jsonl"), log=logs.append)
    return res, logs


def weights(path) -> dict:
    return safe_load(path)["model"]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def fresh_start(logs) -> bool:
    return any("starting fresh" in m for m in logs) and not any("resuming from" in m for m in logs)


def test_new_corpus_content_at_the_same_path_retrains(tmp_path):
    d = make_data(tmp_path / "data")
    _, logs = out_run(d, tmp_path)
    assert not any("resuming" in m for m in logs)
    old = weights(tmp_path / "run.pt")
    rec = json.loads((tmp_path / "run" / "inputs.json").read_text())
    assert rec["train"]["hx"]["path"] == d["train"]["hx"] and rec["vocab"]["sha256"] == sha256_file(d["vocab"])
    write_lang(d["dir"], "hx", seed=7)  # other sentences of the same words, binarized with the same vocabulary
    binarize(d["dir"] / "train.hx", d["vocab"], d["train"]["hx"], "hx", log=QUIET)
    res, logs = out_run(d, tmp_path)
    assert fresh_start(logs) and any("inputs changed: train.hx" in m and d["train"]["hx"] in m for m in logs), logs
    assert not any("already finished" in m for m in logs)
    assert (tmp_path / "run" / "checkpoint.pt.stale-1").is_file() and res["step"] == 4
    assert not same_weights(old, weights(tmp_path / "run.pt"))
    assert json.loads((tmp_path / "run" / "inputs.json").read_text())["train"]["hx"]["sha256"] != \
        rec["train"]["hx"]["sha256"]


def test_new_vocabulary_content_at_the_same_path_retrains(tmp_path):
    d = make_data(tmp_path / "data")
    out_run(d, tmp_path)
    n_old = len(safe_load(tmp_path / "run.pt")["words"])
    make_data(tmp_path / "data", extra_words=5)  # same paths: a larger vocabulary, corpora binarized with it
    res, logs = out_run(d, tmp_path)  # before: resumed, then a 'size mismatch' traceback
    assert fresh_start(logs) and any("inputs changed:" in m and "vocab" in m for m in logs), logs
    m = load_model(tmp_path / "run.pt")
    assert len(m.words) == n_old + 5 == len(Dictionary.read_vocab(d["vocab"]))


def test_changed_init_checkpoint_retrains(data, tmp_path):
    cfg = mlm_cfg()
    dico = Dictionary.read_vocab(data["vocab"])
    init = tmp_path / "init.pt"

    def write_init(seed):
        torch.manual_seed(seed)
        model = TransformerModel(cfg.model, len(dico), 2, False)
        save_model(init, "mlm", {"model": model}, cfg.model, ["hx", "lx"], dico.words, dico.counts, {})

    write_init(0)
    out_run(data, tmp_path, init=str(init))
    old = weights(tmp_path / "run.pt")
    _, logs = out_run(data, tmp_path, init=str(init))  # unchanged: nothing to train
    assert any("already finished" in m for m in logs) and same_weights(old, weights(tmp_path / "run.pt"))
    write_init(1)  # a retrained upstream model at the same path
    _, logs = out_run(data, tmp_path, init=str(init))
    assert fresh_start(logs) and any(f"inputs changed: init ({init})" in m for m in logs), logs
    assert any(f"initialized from {init}" in m for m in logs)
    assert not same_weights(old, weights(tmp_path / "run.pt"))


def test_budget_raised_continues_lowered_below_the_steps_taken_starts_fresh(data, tmp_path):
    over = {"run": {"epoch_size": 80, "max_epochs": 3}}  # 10 steps per epoch
    res4, _ = out_run(data, tmp_path, **merge(over, {"run": {"max_steps": 4}}))
    h4 = metrics_of(tmp_path / "run.jsonl")
    assert res4["step"] == 4 and len(h4) == 1
    assert safe_load(tmp_path / "run" / "checkpoint.pt")["trainer"]["stopped"] == ["max_steps"]
    res, logs = out_run(data, tmp_path, **merge(over, {"run": {"max_steps": 12}}))  # a finished run, more budget
    assert any("resuming from" in m and "stopped at max_steps" in m for m in logs), logs
    assert not any("stale" in m for m in logs)
    h12 = metrics_of(tmp_path / "run.jsonl")
    assert res["step"] == h12[-1]["step"] == 12 and h12[: len(h4)] == h4 and len(h12) > len(h4)
    res, logs = out_run(data, tmp_path, **merge(over, {"run": {"max_steps": 4}}))  # fewer steps than taken
    assert fresh_start(logs) and any("took 12 steps, more than run.max_steps = 4" in m for m in logs), logs
    assert res["step"] == 4 and metrics_of(tmp_path / "run.jsonl") == h4  # the same run as the first one


def test_digest_cache_hashes_a_file_again_only_when_it_changed(tmp_path):
    f, cache_file = tmp_path / "corpus.bin", tmp_path / "digests.json"
    f.write_bytes(b"a" * 1000)
    c = DigestCache(cache_file)
    assert c.sha256(f) == (sha256_file(f), 1000) and c.hashed_bytes == 1000
    c.save()
    c = DigestCache(cache_file)
    assert c.sha256(f)[0] == sha256_file(f) and c.hashed_bytes == 0 and c.cached_bytes == 1000
    old = sha256_file(f)
    st = f.stat()
    tmp = tmp_path / "new"
    tmp.write_bytes(b"b" * 1000)  # same size, same mtime, replaced atomically (a new inode), as relm writes files
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, f)
    assert c.sha256(f)[0] == sha256_file(f) != old and c.hashed_bytes == 1000


@pytest.mark.parametrize("t, run, verdict", [
    ({"step": 4, "epoch": 1, "done": True, "stopped": ["max_steps"]}, {"max_steps": 8, "max_epochs": 3}, "continue"),
    ({"step": 4, "epoch": 1, "done": True, "stopped": ["max_steps"]}, {"max_steps": 0, "max_epochs": 3}, "continue"),
    ({"step": 4, "epoch": 1, "done": True, "stopped": ["max_steps"]}, {"max_steps": 8, "max_epochs": 1}, "ok"),
    ({"step": 9, "epoch": 3, "done": True, "stopped": ["max_epochs"]}, {"max_steps": 0, "max_epochs": 5}, "continue"),
    ({"step": 9, "epoch": 3, "done": True, "stopped": ["criterion"]}, {"max_steps": 0, "max_epochs": 5}, "ok"),
    ({"step": 9, "epoch": 3, "done": True, "stopped": ["criterion", "max_epochs"]}, {"max_steps": 0, "max_epochs": 5},
     "ok"),
    ({"step": 9, "epoch": 3, "done": True}, {"max_steps": 0, "max_epochs": 5}, "ok"),  # why it stopped: unknown
    ({"step": 9, "epoch": 2, "done": False}, {"max_steps": 20, "max_epochs": 5}, "ok"),
    ({"step": 9, "epoch": 2, "done": False}, {"max_steps": 8, "max_epochs": 5}, "stale"),
    ({"step": 9, "epoch": 3, "done": True, "stopped": ["max_epochs"]}, {"max_steps": 0, "max_epochs": 2}, "stale"),
    ({"step": 9, "epoch": 2, "done": False}, {"max_steps": 0, "max_epochs": 2}, "stale"),
])
def test_budget_verdict(t, run, verdict):
    assert budget_verdict(t, mlm_cfg(run=run).run)[0] == verdict


def test_deleted_out_model_of_a_finished_run_retrains(data, tmp_path):
    out_run(data, tmp_path)
    delivered = json.loads((tmp_path / "run" / "delivered.json").read_text())
    assert delivered["sha256"] == sha256_file(tmp_path / "run.pt") and delivered["step"] == 4
    _, logs = out_run(data, tmp_path)  # delivered and still there: the outputs again, no training
    assert any("already finished" in m for m in logs) and not any("stale" in m for m in logs)
    (tmp_path / "run.pt").unlink()  # what Snakemake does before it reruns a job (--forcerun, or a deleted model)
    res, logs = out_run(data, tmp_path)
    assert fresh_start(logs) and any("is missing: a forced rerun" in m for m in logs), logs
    assert not any("already finished" in m for m in logs)
    assert (tmp_path / "run" / "checkpoint.pt.stale-1").is_file() and res["step"] == 4
    assert (tmp_path / "run.pt").is_file()


def test_finished_but_not_delivered_writes_the_outputs_without_training(data, tmp_path):
    out_run(data, tmp_path)
    old = weights(tmp_path / "run.pt")
    hist = metrics_of(tmp_path / "run.jsonl")
    for f in (tmp_path / "run.pt", tmp_path / "run.jsonl", tmp_path / "run" / "delivered.json"):
        f.unlink()  # killed after the last checkpoint, before finish() wrote the outputs
    res, logs = out_run(data, tmp_path)
    assert any("already finished" in m for m in logs) and not any("stale" in m or "end of epoch" in m for m in logs)
    assert same_weights(old, weights(tmp_path / "run.pt")) and metrics_of(tmp_path / "run.jsonl") == hist
    assert json.loads((tmp_path / "run" / "delivered.json").read_text())["sha256"] == sha256_file(tmp_path / "run.pt")


def test_a_second_trainer_on_the_run_directory_is_refused(data, tmp_path):
    cfg, dico = mlm_cfg(), Dictionary.read_vocab(data["vocab"])
    first = Trainer(cfg, "mlm", tmp_path / "run", {}, ["hx", "lx"], dico.words, dico.counts, log=QUIET)
    with pytest.raises(RunDirBusyError, match=re.escape(f"{tmp_path / 'run'} is in use by PID {os.getpid()}")):
        Trainer(cfg, "mlm", tmp_path / "run", {}, ["hx", "lx"], dico.words, dico.counts, log=QUIET)
    first.close()
    Trainer(cfg, "mlm", tmp_path / "run", {}, ["hx", "lx"], dico.words, dico.counts, log=QUIET).close()


@pytest.mark.parametrize("over, match", [
    ({"run": {"validation_metrics": "valid_xx_mlm_ppl"}}, "valid_xx_mlm_ppl"),
    ({"run": {"stopping_criterion": "valid_hx_mlm_ppl"}}, "stopping_criterion"),
    ({"mlm_steps": ["zz"]}, "zz"),
    ({"trainable": "adapters"}, "adapter_size"),
    ({"lambda_mlm": "0:1,x"}, "lambda_mlm"),
])
def test_config_errors(data, tmp_path, over, match):
    with pytest.raises(ValueError, match=match):
        small_run(data, tmp_path / "r", **over)


def test_corpus_of_wrong_language_or_vocabulary(data, tmp_path):
    with pytest.raises(ValueError, match="language 'lx'"):
        train_mlm(mlm_cfg(), str(tmp_path / "r"), data["vocab"], {"hx": data["train"]["lx"]}, {}, log=QUIET)
    (tmp_path / "other").write_text("zz1 5\nzz2 4\n")
    j = tmp_path / "c.json"
    binarize(data["dir"] / "valid.hx", tmp_path / "other", j, "hx", log=QUIET)
    with pytest.raises(ValueError, match="not a prefix"):
        train_mlm(mlm_cfg(), str(tmp_path / "r"), data["vocab"], {"hx": str(j)}, {}, log=QUIET)


# --- DDP with 2 CPU processes (gloo) -------------------------------------------------------------------------------

DDP_WORKER = """
import json, sys, torch
import torch.nn.functional as F
from relm.config import MLMConfig, from_dict
from relm.data.dictionary import Dictionary
from relm.model.transformer import TransformerModel
from relm.train.loop import Trainer
from relm.train.mlm import MLMNet
a = json.loads(sys.argv[1])
cfg = from_dict(MLMConfig, a["cfg"])
dico = Dictionary.read_vocab(a["vocab"])
tr = Trainer(cfg, "mlm", a["run_dir"], {}, ["hx", "lx"], dico.words, dico.counts, log=print)
model = TransformerModel(cfg.model, len(dico), 2, False)
tr.attach({"model": model}, MLMNet(model), {})
rank, world = tr.dist.rank, tr.dist.world
g = torch.Generator().manual_seed(123)
losses = []
for step in range(3):  # the global batch: 4 rows, 3 targets per row; rank r takes rows [4r/world, 4(r+1)/world)
    x = torch.randint(14, len(dico), (4, 12), generator=g)
    pred = torch.zeros(4, 12, dtype=torch.bool)
    pred[:, [2, 5, 9]] = True
    rows = slice(4 * rank // world, 4 * (rank + 1) // world)
    xr, pr = x[rows].masked_fill(pred[rows], 5), pred[rows]
    logits = tr.net(xr, torch.full((len(xr),), 12), torch.zeros_like(xr), pr)
    loss = F.cross_entropy(logits, x[rows][pr])
    tr.optimize(loss)
    losses.append(loss.item())
torch.save({"losses": losses, "state": model.state_dict()}, a["out"] + f".{rank}")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                                      "MASTER_"))}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def test_ddp_two_processes_equal_one(data, tmp_path):
    cfg = merge(MLM, {"model": {"dropout": 0.0, "attention_dropout": 0.0}})
    args = lambda name: json.dumps({"cfg": cfg, "vocab": data["vocab"], "run_dir": str(tmp_path / name),  # noqa: E731
                                    "out": str(tmp_path / name)})
    single = subprocess.run([sys.executable, "-c", DDP_WORKER, args("one")], capture_output=True, text=True,
                            env=clean_env(), timeout=300)
    assert single.returncode == 0, single.stderr
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-c", DDP_WORKER, args("two")], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env=clean_env(RANK=r, WORLD_SIZE=2, LOCAL_RANK=r, MASTER_ADDR="127.0.0.1",
                                            MASTER_PORT=port))
             for r in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "world 2" in outs[0]
    one = torch.load(tmp_path / "one.0")
    r0, r1 = torch.load(tmp_path / "two.0"), torch.load(tmp_path / "two.1")
    assert np.allclose(one["losses"], (np.array(r0["losses"]) + np.array(r1["losses"])) / 2, atol=1e-5)
    assert r0["losses"] != r1["losses"]
    for k, v in one["state"].items():
        if "k_lin.bias" not in k:  # its gradient is 0 in theory (softmax is shift-invariant): Adam amplifies round-off
            assert torch.allclose(v, r0["state"][k], atol=1e-5), k
        assert torch.equal(r0["state"][k], r1["state"][k]), k  # replicas stay identical


def test_ddp_ranks_follow_the_masters_decision(data, tmp_path):
    """Only rank 0 takes the run-directory lock and decides; a refusal reaches every rank as the same one-line error
    (no rank waits for the others forever)."""
    from relm.train.resume import RunLock

    (tmp_path / "run").mkdir()
    held = RunLock(tmp_path / "run", QUIET)  # another trainer
    args = json.dumps({"cfg": MLM, "vocab": data["vocab"], "run_dir": str(tmp_path / "run"), "out": str(tmp_path)})
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-c", DDP_WORKER, args], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env=clean_env(RANK=r, WORLD_SIZE=2, LOCAL_RANK=r, MASTER_ADDR="127.0.0.1",
                                            MASTER_PORT=port))
             for r in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    held.release()
    for p, out in zip(procs, outs):
        assert p.returncode != 0 and f"RunDirBusyError: run directory {tmp_path / 'run'} is in use by PID " \
            f"{os.getpid()}" in out, out


def test_ddp_slurm_tasks_end_to_end(data, tmp_path):
    port = free_port()
    if not 10001 <= port <= 20000:
        port = next(p for p in range(15000, 20000) if _port_free(p))
    args = {"cfg": merge(MLM, {"run": {"max_epochs": 2, "epoch_size": 32}}), "run_dir": str(tmp_path / "run"),
            "vocab": data["vocab"], "train": data["train"], "valid": data["valid"], "test": data["test"],
            "out": str(tmp_path / "out.pt"), "metrics": str(tmp_path / "m.jsonl")}
    procs = [subprocess.Popen([sys.executable, "-c", RUNNER, json.dumps(args)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env=clean_env(SLURM_NTASKS=2, SLURM_PROCID=r, SLURM_LOCALID=r,
                                            SLURM_JOB_ID=port - 10001, SLURM_JOB_NODELIST="localhost"))
             for r in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "world 2" in outs[0] and "end of epoch" not in outs[1]  # only the master logs
    assert len(metrics_of(tmp_path / "m.jsonl")) == 2 and load_model(tmp_path / "out.pt").kind == "mlm"
    ranks = safe_load(tmp_path / "run" / "checkpoint.pt")["ranks"]
    assert len(ranks) == 2 and ranks[0]["trainer"] != ranks[1]["trainer"]  # each rank its own random stream


def _port_free(p: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", p))
            return True
        except OSError:
            return False


@pytest.mark.parametrize("env, world", [
    ({}, 1),
    ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_JOB_ID": "7"}, 1),  # a normal 1-task job
    ({"SLURM_NTASKS": "4", "SLURM_PROCID": "2", "SLURM_LOCALID": "0", "SLURM_JOB_ID": "123"}, 4),
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, 2),
])
def test_dist_from_env(monkeypatch, env, world):
    monkeypatch.setattr(os, "environ", clean_env(**env))  # dist_from_env exports MASTER_*/RANK: keep them local
    info = dist_from_env()
    assert info.world == world
    if "SLURM_NTASKS" in env and world > 1:
        assert info.rank == 2 and os.environ["MASTER_PORT"] == str(10001 + 123) and os.environ["RANK"] == "2"
        assert os.environ["MASTER_ADDR"] == "127.0.0.1"


# --- RE-LM: vocabulary extension, adapters --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def relm_data(tmp_path_factory):
    """HMR vocab + a fresh HMR checkpoint; the extended vocab (LMR tokens appended) and corpora for it."""
    d = tmp_path_factory.mktemp("relm")
    write_lang(d, "hx", seed=1)
    write_lang(d, "lx", seed=1, offset=1)
    count_vocab([d / "train.hx"], d / "vocab.hx")
    count_vocab([d / "train.lx"], d / "vocab.lx")
    side = extend_vocab(d / "vocab.hx", d / "vocab.lx", d, lmr="lx", hmr="hx", log=QUIET)
    ext = side["ext_vocab"]
    hmr = Dictionary.read_vocab(d / "vocab.hx")
    cfg = from_dict(MLMConfig, MLM)
    torch.manual_seed(0)
    model = TransformerModel(cfg.model, len(hmr), 1, False)
    save_model(d / "hmr.pt", "mlm", {"model": model}, cfg.model, ["hx"], hmr.words, hmr.counts, {})
    files = binarize_all(d, ("hx", "lx"), Path(ext))
    files["train"]["hx"] = str(d / "train.hx.hmr.json")  # the HMR train corpus keeps the HMR vocabulary (a prefix)
    binarize(d / "train.hx", d / "vocab.hx", files["train"]["hx"], "hx", log=QUIET)
    sidecar = next(d.glob("vocab.lx-hx-ext.json"))
    return {"dir": d, "ext": ext, "side": side, "sidecar": str(sidecar), "hmr_ckpt": str(d / "hmr.pt"),
            "n_hmr": len(hmr), **files}


def test_relm_extension_trains(relm_data, tmp_path):
    r = relm_data
    assert r["side"]["n_new"] > 0
    res = train_mlm(mlm_cfg(run={"max_epochs": 1, "epoch_size": 32}), str(tmp_path / "run"), r["ext"], r["train"],
                    r["valid"], init=r["hmr_ckpt"], extension=r["sidecar"], out=str(tmp_path / "out.pt"), log=QUIET)
    assert res["step"] == 4
    m = load_model(tmp_path / "out.pt")
    n_ext = len(Dictionary.read_vocab(r["ext"]))
    assert len(m.words) == n_ext == r["n_hmr"] + r["side"]["n_new"]
    assert m.encoder.embeddings.weight.shape[0] == n_ext


def test_relm_extension_mismatch(relm_data, tmp_path):
    r = relm_data
    bad = tmp_path / "side.json"
    bad.write_text(json.dumps({**r["side"], "n_new": r["side"]["n_new"] - 1}))
    with pytest.raises(CheckpointError, match="n_new"):
        train_mlm(mlm_cfg(), str(tmp_path / "run"), r["ext"], r["train"], r["valid"], init=r["hmr_ckpt"],
                  extension=str(bad), log=QUIET)
    with pytest.raises(CheckpointError, match="another dictionary"):  # extended vocab without the sidecar
        train_mlm(mlm_cfg(), str(tmp_path / "run2"), r["ext"], r["train"], r["valid"], init=r["hmr_ckpt"], log=QUIET)


@pytest.mark.parametrize("train_lang_emb", [False, True])
def test_adapters_train_only_the_reference_set(relm_data, tmp_path, train_lang_emb):
    r = relm_data
    over = {"model": {"adapter_size": 8, "dropout": 0.0, "attention_dropout": 0.0}, "trainable": "adapters",
            "langs": ["hx", "lx"], "run": {"max_epochs": 1, "epoch_size": 16}, "train_lang_emb": train_lang_emb}
    cfg = mlm_cfg(**over)
    ext = Dictionary.read_vocab(r["ext"])
    torch.manual_seed(1)
    init = TransformerModel(cfg.model, len(ext), 2, False)  # already extended, with adapters
    save_model(tmp_path / "init.pt", "mlm", {"model": init}, cfg.model, ["hx", "lx"], ext.words, ext.counts, {})
    train_mlm(cfg, str(tmp_path / "run"), r["ext"], r["train"], r["valid"], init=str(tmp_path / "init.pt"),
              out=str(tmp_path / "out.pt"), log=QUIET)
    before, after = init.state_dict(), safe_load(tmp_path / "out.pt")["model"]
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    expected = {k for k in before if k.startswith(ADAPTER_TRAINABLE_PREFIXES)} | (
        {"lang_embeddings.weight"} if train_lang_emb else set())
    assert changed == expected
    assert any(k.startswith("adapters_") for k in changed)


@pytest.fixture(scope="module")
def hmr_pretrained(relm_data, tmp_path_factory):
    """A tiny HMR MLM trained well below unigram perplexity, and its last HMR validation perplexity."""
    r, d = relm_data, tmp_path_factory.mktemp("pre")
    binarize(r["dir"] / "valid.hx", r["dir"] / "vocab.hx", d / "valid.hx.json", "hx", log=QUIET)
    cfg = mlm_cfg(model={"dropout": 0.0, "attention_dropout": 0.0}, run={"max_epochs": 10, "epoch_size": 800, "validation_metrics": "_valid_hx_mlm_ppl"})
    train_mlm(cfg, str(d / "run"), str(r["dir"] / "vocab.hx"), {"hx": r["train"]["hx"]},
              {"hx": str(d / "valid.hx.json")}, out=str(d / "hmr.pt"), metrics_out=str(d / "m.jsonl"), log=QUIET)
    return str(d / "hmr.pt"), metrics_of(d / "m.jsonl")[-1]["valid_hx_mlm_ppl"]


@pytest.mark.parametrize("new_lang_emb", ["random", "zero"])
def test_adapter_stage_and_new_language_embeddings(relm_data, hmr_pretrained, tmp_path, new_lang_emb):
    """The original adds fresh random language embeddings, frozen, to every input of the frozen HMR model; zero-init
    ones leave the model's view of HMR text as pretrained, so HMR perplexity stays near the pretrained one."""
    r, (init, ppl0) = relm_data, hmr_pretrained
    cfg = mlm_cfg(model={"adapter_size": 8, "dropout": 0.0, "attention_dropout": 0.0}, trainable="adapters",
                  langs=["hx", "lx"], mlm_steps=["lx"], new_lang_emb=new_lang_emb,
                  run={"max_epochs": 1, "epoch_size": 80, "validation_metrics": "_valid_lx_mlm_ppl"})
    train_mlm(cfg, str(tmp_path / "run"), r["ext"], r["train"], r["valid"], init=init, extension=r["sidecar"],
              out=str(tmp_path / "out.pt"), metrics_out=str(tmp_path / "m.jsonl"), log=QUIET)
    ppl = metrics_of(tmp_path / "m.jsonl")[-1]["valid_hx_mlm_ppl"]
    lang = safe_load(tmp_path / "out.pt")["model"]["lang_embeddings.weight"]
    if new_lang_emb == "zero":
        assert torch.count_nonzero(lang) == 0  # frozen at 0
        assert ppl < 1.5 * ppl0, (ppl, ppl0)
    else:
        assert lang.abs().mean() > 0.05
        assert ppl > 3 * ppl0, (ppl, ppl0)  # the damage the zero setting avoids


# --- UNMT -----------------------------------------------------------------------------------------------------------

UNMT = {"model": MODEL, "optim": {"lr": 1e-3, "warmup_updates": 5}, "ae_steps": ["hx", "lx"],
        "bt_steps": ["hx-lx-hx", "lx-hx-lx"], "tokens_per_batch": 120, "batch_size": 8,
        "run": {"epoch_size": 64, "max_epochs": 1, "threads": 1, "log_every": 1,
                "validation_metrics": "valid_lx-hx_mt_bleu"}}


@pytest.mark.parametrize("beam", [1, 3])
def test_unmt_epoch(data, tmp_path, beam):
    mcfg = mlm_cfg()
    dico = Dictionary.read_vocab(data["vocab"])
    mlm = TransformerModel(mcfg.model, len(dico), 2, False)
    save_model(tmp_path / "mlm.pt", "mlm", {"model": mlm}, mcfg.model, ["hx", "lx"], dico.words, dico.counts, {})
    logs = []
    cfg = from_dict(UNMTConfig, merge(UNMT, {"beam_size": beam}))
    res = train_unmt(cfg, str(tmp_path / "run"), data["vocab"], data["train"], data["valid"], data["test"],
                     init=str(tmp_path / "mlm.pt"), out=str(tmp_path / "out.pt"), metrics_out=str(tmp_path / "m.jsonl"),
                     log=logs.append)
    assert res["step"] == 64 // 8  # 2 AE + 2 BT updates per iteration, 8 nominal sentences each
    (rec,) = metrics_of(tmp_path / "m.jsonl")
    for split in ("valid", "test"):
        for d in ("hx-lx", "lx-hx"):
            assert {f"{split}_{d}_mt_bleu", f"{split}_{d}_mt_ppl", f"{split}_{d}_mt_acc"} <= set(rec)
            assert 0 <= rec[f"{split}_{d}_mt_bleu"] <= 100 and rec[f"{split}_{d}_mt_ppl"] > 1
    assert any("ae_hx" in m and "bt_lx-hx-lx" in m for m in logs)
    m = load_model(tmp_path / "out.pt")
    assert m.kind == "unmt" and m.decoder is not None and m.langs == ["hx", "lx"]
    # encoder and decoder started from the MLM: self-attention equal at the start, different after training
    st = safe_load(tmp_path / "out.pt")
    assert not torch.equal(st["encoder"]["attentions.0.q_lin.weight"], mlm.state_dict()["attentions.0.q_lin.weight"])


def test_unmt_init_checks_dictionary(data, relm_data, tmp_path):
    with pytest.raises(CheckpointError, match="another dictionary"):
        train_unmt(from_dict(UNMTConfig, UNMT), str(tmp_path / "run"), data["vocab"], data["train"], data["valid"],
                   init=relm_data["hmr_ckpt"], log=QUIET)


# --- non-finite losses ----------------------------------------------------------------------------------------------

def test_nan_steps_are_skipped_then_fatal(data, tmp_path):
    cfg = mlm_cfg(run={"max_nan_steps": 3})
    dico = Dictionary.read_vocab(data["vocab"])
    tr = Trainer(cfg, "mlm", tmp_path / "run", {}, ["hx", "lx"], dico.words, dico.counts, log=QUIET)
    model = TransformerModel(cfg.model, len(dico), 2, False)
    tr.attach({"model": model}, MLMNet(model), {})
    x = torch.randint(14, len(dico), (2, 8))
    pred = torch.zeros(2, 8, dtype=torch.bool)
    pred[:, 3] = True

    def loss(scale=1.0):
        return F.cross_entropy(tr.net(x, torch.full((2,), 8), None, pred), x[pred]) * scale

    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert not tr.optimize(loss(float("nan"))) and not tr.optimize(loss(float("inf")))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()) and tr.step == 0
    assert tr.optimize(loss()) and tr.step == 1 and tr.nan_run == 0 and tr.nan_total == 2
    tr.optimize(loss(float("nan")))
    tr.optimize(loss(float("nan")))
    with pytest.raises(NonFiniteLossError, match="3 consecutive.*no checkpoint was written yet"):
        tr.optimize(loss(float("nan")))
    assert tr.optimize(loss()) and tr.step == 2
    tr.save_checkpoint()  # the error names the checkpoint only once there is one
    for _ in range(2):
        tr.optimize(loss(float("nan")))
    with pytest.raises(NonFiniteLossError, match=re.escape(f"last good checkpoint is {tr.ckpt_path} (step 2)")):
        tr.optimize(loss(float("nan")))
    assert tr.ckpt_path.is_file()
    tr.signals.restore()


def test_non_finite_metric_is_never_best(data, tmp_path):
    cfg = mlm_cfg(run={"validation_metrics": "_valid_x", "stopping_criterion": "_valid_x,1", "max_epochs": 10})
    dico = Dictionary.read_vocab(data["vocab"])
    tr = Trainer(cfg, "mlm", tmp_path / "run", {}, ["hx", "lx"], dico.words, dico.counts, log=QUIET)
    model = TransformerModel(cfg.model, len(dico), 2, False)
    tr.attach({"model": model}, MLMNet(model), {})
    best = tmp_path / "run" / "best-valid_x.pt"
    tr.end_epoch(lambda: {"valid_x": float("nan")})
    assert tr.best == {} and tr.best_stop is None and tr.bad_epochs == 1 and not best.exists() and not tr.done
    tr.end_epoch(lambda: {"valid_x": 5.0})
    assert tr.best == {"valid_x": 5.0} and tr.bad_epochs == 0 and not tr.done
    assert safe_load(best)["metrics"]["epoch"] == 1
    tr.end_epoch(lambda: {"valid_x": float("inf")})
    assert tr.best == {"valid_x": 5.0} and tr.bad_epochs == 1 and not tr.done
    tr.end_epoch(lambda: {"valid_x": float("nan")})
    assert tr.done and tr.stopped == ["criterion"] and safe_load(best)["metrics"]["epoch"] == 1
    tr.signals.restore()
    tr.close()

