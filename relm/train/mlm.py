"""Masked-LM training (XLM's MLM objective): HMR pretraining, RE-LM fine-tuning on an extended vocabulary (with or
without adapters) and the joint XLM baseline.

Each iteration draws min(5, len(mlm_steps)) languages of mlm_steps with replacement (XLM) and makes one optimizer
update per draw on a batch of `batch_size` streams x `bptt` tokens. Targets: Bernoulli(word_pred) positions (or
frequency-based with sample_alpha > 0), never padding or position 0; 80% MASK, 10% kept, 10% random id in
[0, n_words). Evaluation: a fixed RandomState(0) masking, all targets MASK, at least one per sequence;
metrics {valid,test}_{lang}_mlm_{ppl,acc} (+ {split}_mlm_{ppl,acc} averages when several languages are evaluated).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from relm.config import MLMConfig
from relm.data.batches import StreamBatches
from relm.data.corpus import open_corpora
from relm.data.dictionary import Dictionary
from relm.errors import ConfigError
from relm.model.checkpoint import load_start
from relm.model.extend import extension_size, load_extended
from relm.model.newrows import read_rows
from relm.model.transformer import TransformerModel, set_adapter_finetuning
from relm.train.loop import Trainer, ce_stats
from relm.train.metrics import mlm_metric_names, ppl_acc
from relm.train.schedule import Lambda
from relm.tokens import MASK, PAD


class MLMNet(nn.Module):
    """Model + output layer in one forward, so that DDP sees every parameter used."""

    def __init__(self, model: TransformerModel):
        super().__init__()
        self.model = model

    def forward(self, x, lengths, langs, pred_mask):
        return self.model.logits(self.model(x, lengths, langs)[pred_mask])


def parse_keep_rand(spec: str) -> np.ndarray:
    try:
        p = np.array([float(v) for v in spec.split(",")])
    except ValueError:
        p = np.array([])
    if len(p) != 3 or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"bad word_mask_keep_rand {spec!r}: expected three non-negative numbers 'mask,keep,rand'")
    return p / p.sum()


def mask_out(x: torch.Tensor, rng: np.random.RandomState, n_words: int, word_pred: float, probs: np.ndarray,
             mask_scores: np.ndarray | None = None):
    """Training masking of batch-first x [bs, slen] -> (x with replacements, targets y, pred_mask [bs, slen])."""
    bs, slen = x.shape
    if mask_scores is None:
        pred = rng.rand(bs, slen) <= word_pred
    else:
        p = mask_scores[x.numpy().ravel()]
        n_tgt = min(math.ceil(word_pred * bs * slen), int((p > 0).sum()))
        pred = np.zeros(bs * slen, dtype=bool)
        pred[rng.choice(bs * slen, n_tgt, replace=False, p=p / p.sum())] = True
        pred = pred.reshape(bs, slen)
    pred[x.numpy() == PAD] = False
    pred[:, 0] = False
    if not pred.any():  # tiny batches: keep the loss defined
        pred[rng.randint(bs), rng.randint(1, slen)] = True
    pred = torch.from_numpy(pred)
    y = x[pred]
    n = len(y)
    kind = rng.choice(3, size=n, p=probs)  # 0 = MASK, 1 = keep, 2 = random word
    rand = torch.from_numpy(rng.randint(0, n_words, size=n))
    new = torch.where(torch.from_numpy(kind == 0), torch.full_like(y, MASK), y)
    new = torch.where(torch.from_numpy(kind == 2), rand, new)
    x = x.clone()
    x[pred] = new
    return x, y, pred


def eval_mask(x: torch.Tensor, rng: np.random.RandomState, word_pred: float):
    """Evaluation masking (XLM evaluator): Bernoulli targets plus one forced target per sequence, all MASK."""
    bs, slen = x.shape
    pred = np.zeros((bs, slen), dtype=bool)
    for i in range(bs):
        pred[i] = rng.rand(slen) <= word_pred
        pred[i, 0] = False
        pred[i, rng.randint(1, slen - 1)] = True
    pred = torch.from_numpy(pred)
    y = x[pred]
    x = x.masked_fill(pred, MASK)
    return x, y, pred


def load_init(model: TransformerModel, init: str, dico: Dictionary, langs: list[str], cfg: MLMConfig,
              extension: str | None, log, ext_rows: str | None = None) -> None:
    """Initialize `model` from our MLM checkpoint; with `extension`, from an HMR checkpoint whose vocabulary is
    extended by the sidecar's n_new rows (RE-LM): drawn at random, or read from `ext_rows` (cfg.extension_init)."""
    ck = load_start(init, ("mlm",), cfg.model, dico=None if extension else dico)
    n_new = extension_size(extension, ck["words"], dico, init) if extension else 0
    state = dict(ck["model"])
    if "lang_embeddings.weight" in state and (list(ck["langs"]) != langs or not hasattr(model, "lang_embeddings")):
        log(f"language embeddings of {init} (langs {ck['langs']}) are not used: new ones for {langs}")
        del state["lang_embeddings.weight"]
    g = torch.Generator().manual_seed(cfg.run.seed)
    rows = None
    if extension and cfg.extension_init != "random":
        rows = torch.from_numpy(read_rows(ext_rows, cfg.extension_init, n_new, cfg.model.dim))
    load_extended(model, state, n_new, len(dico), g, rows)
    if hasattr(model, "lang_embeddings") and "lang_embeddings.weight" not in state:
        if cfg.new_lang_emb == "zero":
            with torch.no_grad():
                model.lang_embeddings.weight.zero_()
        log(f"new language embeddings for {langs}: {cfg.new_lang_emb}")
    if extension:
        source = f" ({ext_rows})" if rows is not None else ""
        log(f"initialized from {init}, vocabulary extended by {n_new} words, new rows: {cfg.extension_init}{source}")
    else:
        log(f"initialized from {init}")


def train_mlm(cfg: MLMConfig, run_dir: str, vocab: str, train: dict[str, str], valid: dict[str, str],
              test: dict[str, str] | None = None, init: str | None = None, extension: str | None = None,
              ext_rows: str | None = None,
              out: str | None = None, metrics_out: str | None = None, log=print) -> dict:
    """Train a masked LM; returns a summary dict (step, epoch, best, last metrics, history, out)."""
    valid, test = dict(valid or {}), dict(test or {})
    langs = sorted(cfg.langs or train)
    steps = list(cfg.mlm_steps or langs)
    eval_langs = list(cfg.eval_langs or langs)
    for what, ls in (("mlm_steps", steps), ("eval_langs", eval_langs)):
        bad = [lg for lg in ls if lg not in langs]
        if bad:
            raise ValueError(f"{what} {bad} are not among the model's languages {langs}")
    missing = [lg for lg in steps if lg not in train]
    if missing:
        raise ValueError(f"mlm_steps need training corpora for {missing} (given: {sorted(train)})")
    if cfg.trainable not in ("all", "adapters"):
        raise ValueError(f"trainable must be 'all' or 'adapters', got {cfg.trainable!r}")
    if cfg.trainable == "adapters" and cfg.model.adapter_size <= 0:
        raise ValueError("trainable: adapters needs model.adapter_size > 0")
    if not 2 < cfg.bptt <= cfg.model.max_positions:
        raise ValueError(f"bptt {cfg.bptt} must be in (2, model.max_positions={cfg.model.max_positions}]")
    probs = parse_keep_rand(cfg.word_mask_keep_rand)
    lam = Lambda(cfg.lambda_mlm, "lambda_mlm")

    dico = Dictionary.read_vocab(vocab)
    train_c = open_corpora({lg: train[lg] for lg in sorted(set(steps))}, dico, vocab, "train")
    empty = [str(c.path) for c in train_c.values() if c.n_tokens == 0]
    if empty:
        raise ValueError(f"empty training corpora: {', '.join(empty)}")
    evals = {split: open_corpora({lg: p for lg, p in paths.items() if lg in eval_langs}, dico, vocab, split)
             for split, paths in (("valid", valid), ("test", test))}
    metric_names = mlm_metric_names({split: list(cs) for split, cs in evals.items()})
    if cfg.extension_init != "random" and not (extension and ext_rows):
        raise ConfigError(f"extension_init {cfg.extension_init!r} needs a vocabulary extension (--extension) and its "
                          f"new rows (--ext-rows, from relm vocab init-rows)", "extension_init")
    inputs = dict(vocab=vocab, train=train, valid=valid, test=test, init=init, extension=extension)
    if ext_rows:
        inputs["ext_rows"] = ext_rows
    trainer = Trainer(cfg, "mlm", run_dir, inputs, langs, dico.words, dico.counts, metric_names, log, out=out)
    try:  # the run directory is locked from here on
        model = TransformerModel(cfg.model, len(dico), len(langs), is_decoder=False)
        if init and not trainer.resume:
            load_init(model, init, dico, langs, cfg, extension, trainer.log, ext_rows)
        if cfg.trainable == "adapters":
            set_adapter_finetuning(model, cfg.train_lang_emb)
        iterators = {f"mlm:{lg}": StreamBatches(c, cfg.batch_size, cfg.bptt, seed=trainer.seed_for("mlm", lg))
                     for lg, c in train_c.items()}
        trainer.attach({"model": model}, MLMNet(model), iterators)
        dev = trainer.device
        lang_id = {lg: i for i, lg in enumerate(langs)}
        mask_scores = None
        if cfg.sample_alpha > 0:
            counts = np.array(dico.counts, dtype=np.float64)
            mask_scores = np.maximum(counts, 1) ** -cfg.sample_alpha
            mask_scores[PAD] = 0
            mask_scores[counts == 0] = 0

        def langs_of(x, lg):
            return torch.full_like(x, lang_id[lg]) if len(langs) > 1 else None

        def iteration():
            coeff = lam(trainer.n_iter)
            if lam.zero_from(trainer.n_iter):
                raise ValueError(f"lambda_mlm {cfg.lambda_mlm!r} is 0 from iteration {trainer.n_iter} on: "
                                 "nothing to train")
            for i in trainer.rng.choice(len(steps), size=min(5, len(steps)), replace=True):
                lg = steps[i]
                if coeff == 0:
                    continue
                x, lengths = iterators[f"mlm:{lg}"].next()
                x, y, pred = mask_out(x, trainer.rng, len(dico), cfg.word_pred, probs, mask_scores)
                x, lengths, pred, y = x.to(dev), lengths.to(dev), pred.to(dev), y.to(dev)
                with trainer.autocast():
                    logits = trainer.net(x, lengths, langs_of(x, lg), pred)
                loss = F.cross_entropy(logits.float(), y)
                trainer.record(f"mlm_{lg}", loss.item(), x.numel())
                trainer.optimize(loss * coeff)
                trainer.n_sentences += cfg.batch_size

        eval_streams = {(split, lg): StreamBatches(c, 1, cfg.bptt, shuffle=False)
                        for split, cs in evals.items() for lg, c in cs.items()}

        @torch.no_grad()
        def evaluate() -> dict:
            model.eval()
            scores = {}
            for (split, lg), stream in eval_streams.items():
                rng = np.random.RandomState(0)
                stats = [0.0, 0, 0]
                batch = [eval_mask(x, rng, cfg.word_pred) for x, _ in stream.eval_batches()]
                for a in range(0, len(batch), cfg.batch_size):
                    xs, ys, ps = (torch.cat(t) for t in zip(*batch[a: a + cfg.batch_size]))
                    xs, ps = xs.to(dev), ps.to(dev)
                    lengths = torch.full((len(xs),), xs.size(1), device=dev)
                    with trainer.autocast():
                        logits = model.logits(model(xs, lengths, langs_of(xs, lg))[ps])
                    for k, v in enumerate(ce_stats(logits, ys.to(dev))):
                        stats[k] += v
                scores[f"{split}_{lg}_mlm_ppl"], scores[f"{split}_{lg}_mlm_acc"] = ppl_acc(*stats)
            for split, cs in evals.items():
                if len(cs) > 1:
                    for m in ("ppl", "acc"):
                        scores[f"{split}_mlm_{m}"] = float(np.mean([scores[f"{split}_{lg}_mlm_{m}"] for lg in cs]))
            model.train()
            return scores

        trainer.run(iteration, evaluate)
        return trainer.finish(out, metrics_out)
    finally:
        trainer.close()
