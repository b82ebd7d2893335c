"""Unsupervised NMT (XLM/RE-LM step 3): denoising auto-encoding + online back-translation.

One iteration: AE steps (ae_steps in random order; noisy -> clean, loss * lambda_ae, skipped while lambda_ae is 0),
then BT steps (bt_steps "l1-l2-l1" in random order: greedy l1 -> l2 translation in eval mode without gradients, then a
teacher-forced l2 -> l1 step on the synthetic pair). Every step is its own optimizer update; the lambdas follow their
schedules in iterations. After every epoch: teacher-forced ppl/acc and BLEU (greedy, or beam when beam_size > 1;
de-BPE'd tokens scored like multi-bleu.perl) for each direction of bt_steps on valid (and test):
{split}_{l1}-{l2}_mt_{ppl,acc,bleu}.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from sacrebleu.metrics import BLEU

from relm.config import UNMTConfig
from relm.data.batches import SentenceBatches, parallel_eval_batches
from relm.data.corpus import open_corpora
from relm.data.dictionary import Dictionary
from relm.data.noise import add_noise
from relm.generate import BACK_TRANSLATION, VALIDATION, generate_beam, generate_greedy
from relm.errors import CheckpointError
from relm.model.checkpoint import build_and_load, load_start
from relm.model.extend import build_unmt_from_mlm
from relm.model.transformer import TransformerModel
from relm.text.tokenize import remove_bpe
from relm.train.loop import Trainer, ce_stats
from relm.train.metrics import mt_directions, mt_metric_names, ppl_acc
from relm.train.schedule import Lambda


class Seq2Seq(nn.Module):
    """Encoder + decoder + output layer in one forward (what DDP wraps)."""

    def __init__(self, encoder: TransformerModel, decoder: TransformerModel):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, x1, len1, langs1, x2, len2, langs2, pred_mask):
        enc = self.encoder(x1, len1, langs1)
        dec = self.decoder(x2, len2, langs2, causal=True, src_enc=enc, src_len=len1)
        return self.decoder.logits(dec[pred_mask])


def target_mask(x2: torch.Tensor, len2: torch.Tensor):
    """Positions that predict the next token (all but the last of each sentence) and their targets."""
    pred = torch.arange(x2.size(1), device=x2.device)[None, :] < (len2[:, None] - 1)
    return pred, x2[:, 1:][pred[:, :-1]]


def parse_bt(steps: list[str]) -> list[tuple[str, str, str]]:
    out = []
    for s in steps:
        parts = s.split("-")
        if len(parts) != 3 or parts[0] != parts[2] or parts[0] == parts[1]:
            raise ValueError(f"bad bt_steps entry {s!r}: expected 'l1-l2-l1' with l1 != l2")
        out.append(tuple(parts))
    return out


def build_models(cfg: UNMTConfig, init: str | None, dico: Dictionary, langs: list[str], log):
    """Encoder/decoder: fresh, from an MLM checkpoint (cross-attention fresh; language embeddings re-drawn when
    redraw_lang_emb), or from a UNMT checkpoint."""
    n_words, n_langs = len(dico), len(langs)
    if not init:
        return (TransformerModel(cfg.model, n_words, n_langs, False),
                TransformerModel(cfg.model, n_words, n_langs, True))
    ck = load_start(init, ("mlm", "unmt"), cfg.model, dico)
    if ck["kind"] == "unmt":
        if list(ck["langs"]) != langs:
            raise CheckpointError(f"{init} is a UNMT model for {ck['langs']}, this run is for {langs}")
        log(f"initialized from the UNMT checkpoint {init}")
        return (build_and_load(ck["encoder"], cfg.model, n_words, n_langs, False, f"{init} [encoder]"),
                build_and_load(ck["decoder"], cfg.model, n_words, n_langs, True, f"{init} [decoder]"))
    redraw = cfg.redraw_lang_emb or list(ck["langs"]) != langs
    if redraw and not cfg.redraw_lang_emb:
        log(f"language embeddings of {init} (langs {ck['langs']}) are not used: new ones for {langs}")
    enc, dec = build_unmt_from_mlm(ck["model"], cfg.model, n_words, n_langs, redraw_lang_emb=redraw)
    log(f"encoder and decoder initialized from {init} (cross-attention new"
        + (", language embeddings re-drawn)" if redraw else ")"))
    return enc, dec


def train_unmt(cfg: UNMTConfig, run_dir: str, vocab: str, train: dict[str, str], valid: dict[str, str],
               test: dict[str, str] | None = None, init: str | None = None, out: str | None = None,
               metrics_out: str | None = None, log=print) -> dict:
    """Train an encoder-decoder with DAE + online BT; returns a summary dict like train_mlm."""
    valid, test = dict(valid or {}), dict(test or {})
    langs = sorted(cfg.langs or train)
    bt = parse_bt(cfg.bt_steps)
    ae = list(cfg.ae_steps)
    if not ae and not bt:
        raise ValueError("UNMT needs ae_steps and/or bt_steps")
    used = sorted(set(ae) | {s[0] for s in bt} | {s[1] for s in bt})
    bad = [lg for lg in used if lg not in langs]
    if bad:
        raise ValueError(f"ae_steps/bt_steps use {bad}, which are not among the model's languages {langs}")
    need = sorted(set(ae) | {s[0] for s in bt})
    if [lg for lg in need if lg not in train]:
        raise ValueError(f"training corpora needed for {need}, given for {sorted(train)}")
    if cfg.tokens_per_batch == 0 or cfg.tokens_per_batch < -1 or (cfg.tokens_per_batch == -1 and cfg.batch_size < 1):
        raise ValueError("tokens_per_batch must be > 0, or -1 with batch_size > 0")
    lam_ae, lam_bt = Lambda(cfg.lambda_ae, "lambda_ae"), Lambda(cfg.lambda_bt, "lambda_bt")
    directions = mt_directions(bt)

    dico = Dictionary.read_vocab(vocab)
    train_c = open_corpora({lg: train[lg] for lg in need}, dico, vocab, "train")
    evals = {split: open_corpora({lg: p for lg, p in paths.items() if lg in langs}, dico, vocab, split)
             for split, paths in (("valid", valid), ("test", test))}
    eval_dirs = [(split, a, b) for split, cs in evals.items() for a, b in directions if a in cs and b in cs]
    metric_names = mt_metric_names(eval_dirs, cfg.eval_bleu)
    inputs = dict(vocab=vocab, train=train, valid=valid, test=test, init=init)
    trainer = Trainer(cfg, "unmt", run_dir, inputs, langs, dico.words, dico.counts, metric_names, log, out=out)
    try:  # the run directory is locked from here on
        if trainer.resume:
            n_words, n_langs = len(dico), len(langs)
            encoder = TransformerModel(cfg.model, n_words, n_langs, False)
            decoder = TransformerModel(cfg.model, n_words, n_langs, True)
        else:
            encoder, decoder = build_models(cfg, init, dico, langs, trainer.log)
        iterators = {}
        for name, ls in (("ae", sorted(set(ae))), ("bt", sorted({s[0] for s in bt}))):
            for lg in ls:
                iterators[f"{name}:{lg}"] = SentenceBatches(train_c[lg], cfg.tokens_per_batch, cfg.batch_size,
                                                            cfg.max_len,
                                                            seed=trainer.seed_for(name, lg),
                                                            max_batch_size=cfg.max_batch_size)
        trainer.attach({"encoder": encoder, "decoder": decoder}, Seq2Seq(encoder, decoder), iterators)
        dev, lang_id = trainer.device, {lg: i for i, lg in enumerate(langs)}

        def seq2seq_step(x1, len1, l1, x2, len2, l2, coeff: float, name: str):
            x1, len1, x2, len2 = x1.to(dev), len1.to(dev), x2.to(dev), len2.to(dev)
            pred, y = target_mask(x2, len2)
            with trainer.autocast():
                logits = trainer.net(x1, len1, torch.full_like(x1, lang_id[l1]), x2, len2,
                                     torch.full_like(x2, lang_id[l2]), pred)
            loss = F.cross_entropy(logits.float(), y)
            trainer.record(name, loss.item(), int(len(y)))
            trainer.optimize(loss * coeff if coeff != 1 else loss)
            trainer.n_sentences += cfg.batch_size

        def iteration():
            coeff_ae, coeff_bt = lam_ae(trainer.n_iter), lam_bt(trainer.n_iter)
            if (not ae or lam_ae.zero_from(trainer.n_iter)) and (not bt or lam_bt.zero_from(trainer.n_iter)):
                raise ValueError(f"lambda_ae {cfg.lambda_ae!r} and lambda_bt {cfg.lambda_bt!r} are 0 from iteration "
                                 f"{trainer.n_iter} on: nothing to train")
            for i in trainer.rng.permutation(len(ae)):
                if coeff_ae == 0:
                    break
                lg = ae[i]
                x, lengths = iterators[f"ae:{lg}"].next()
                xn, ln = add_noise(x, lengths, cfg.word_shuffle, cfg.word_dropout, cfg.word_blank, trainer.rng)
                seq2seq_step(xn, ln, lg, x, lengths, lg, coeff_ae, f"ae_{lg}")
            for i in trainer.rng.permutation(len(bt)):
                if coeff_bt == 0:
                    break
                l1, l2, l3 = bt[i]
                x1, len1 = iterators[f"bt:{l1}"].next()
                x1, len1 = x1.to(dev), len1.to(dev)
                encoder.eval()
                decoder.eval()
                with torch.no_grad(), trainer.autocast():
                    enc1 = encoder(x1, len1, torch.full_like(x1, lang_id[l1]))
                    x2, len2 = generate_greedy(decoder, enc1, len1, lang_id[l2],
                                               max_len=BACK_TRANSLATION(len1, cfg.model.max_positions))
                encoder.train()
                decoder.train()
                seq2seq_step(x2, len2, l2, x1, len1, l3, 1.0 if cfg.bt_loss_unscaled else coeff_bt,
                             f"bt_{l1}-{l2}-{l3}")

        words = dico.words

        def text(row: torch.Tensor, n: int) -> str:
            return remove_bpe(" ".join(words[i] for i in row[1: n - 1].tolist()))

        @torch.no_grad()
        def evaluate() -> dict:
            encoder.eval()
            decoder.eval()
            scores = {}
            for split, a, b in eval_dirs:
                stats, hyps, refs = [0.0, 0, 0], [], []
                for x1, len1, x2, len2, _ in parallel_eval_batches(evals[split][a], evals[split][b], cfg.batch_size,
                                                                   cfg.max_len):
                    x1, len1, x2, len2 = x1.to(dev), len1.to(dev), x2.to(dev), len2.to(dev)
                    with trainer.autocast():
                        enc = encoder(x1, len1, torch.full_like(x1, lang_id[a]))
                        dec = decoder(x2, len2, torch.full_like(x2, lang_id[b]), causal=True, src_enc=enc, src_len=len1)
                        pred, y = target_mask(x2, len2)
                        logits = decoder.logits(dec[pred])
                        if cfg.eval_bleu:
                            max_len = VALIDATION(len1, cfg.model.max_positions)
                            if cfg.beam_size > 1:
                                gen, glen = generate_beam(decoder, enc, len1, lang_id[b], cfg.beam_size,
                                                          cfg.length_penalty,
                                                          cfg.early_stopping, max_len=max_len)
                            else:
                                gen, glen = generate_greedy(decoder, enc, len1, lang_id[b], max_len=max_len)
                    for k, v in enumerate(ce_stats(logits, y)):
                        stats[k] += v
                    if cfg.eval_bleu:
                        hyps += [text(r, n) for r, n in zip(gen.cpu(), glen.tolist())]
                        refs += [text(r, n) for r, n in zip(x2.cpu(), len2.tolist())]
                key = f"{split}_{a}-{b}_mt"
                scores[f"{key}_ppl"], scores[f"{key}_acc"] = ppl_acc(*stats)
                if cfg.eval_bleu:
                    # multi-bleu.perl on tokenized, de-BPE'd text: whitespace split, case-sensitive, no smoothing
                    bleu = BLEU(tokenize="none", smooth_method="none", force=True)
                    scores[f"{key}_bleu"] = bleu.corpus_score(hyps, [refs]).score if hyps else 0.0
            encoder.train()
            decoder.train()
            return scores

        trainer.run(iteration, evaluate)
        return trainer.finish(out, metrics_out)
    finally:
        trainer.close()
