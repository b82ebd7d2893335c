"""The `relm` command line: one subcommand per workflow stage, each a thin wrapper over the package.

Every Snakemake rule calls exactly one of these, so the whole pipeline also runs by hand:

    relm synth | fetch | clean | tokenize | bpe learn | bpe apply | vocab count | vocab extend | vocab init-rows |
    relm binarize
    relm train mlm | train unmt | translate | score | tables | plots | compute
    relm fetch-checkpoint | bpe convert-codes | import-xlm    (starting from a released MLM)
    relm lock                                                 (the data lock, for publication)
"""
from __future__ import annotations

import argparse
import json
import sys


from relm.errors import RelmError


def log(*msg) -> None:
    print(*msg, file=sys.stderr, flush=True)


def _pairs(items: list[str] | None, what: str) -> dict[str, str]:
    """Parse repeated LANG=PATH arguments."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise SystemExit(f"relm: {what} expects LANG=PATH, got {item!r}")
        out[key] = value
    return out


# --- text stages -------------------------------------------------------------------------------

def cmd_synth(a):
    from relm.text.synth import generate_pair

    kwargs = json.loads(a.settings) if a.settings else {}
    seed = kwargs.pop("seed", a.seed)  # a generator may have its own seed
    generate_pair(a.out_dir, hmr=a.hmr, lmr=a.lmr, seed=seed, log=log, **kwargs)


def cmd_fetch(a):
    from relm.text.fetch import fetch

    try:
        source = json.loads(a.source)
    except json.JSONDecodeError as e:
        raise ValueError(f"--source is not JSON ({e}): {a.source!r}") from None
    if not isinstance(source, dict):
        raise ValueError(f"--source must be a JSON object, got {a.source!r}")
    mirrors = json.loads(a.mirrors) if a.mirrors else {}
    fetch(source, a.out, lines=a.lines or None, seed=a.seed, retries=a.retries, timeout=a.timeout,
          retry_delay=a.retry_delay, log=log, lock=a.lock, mirrors=mirrors)


def cmd_clean(a):
    from relm.text.fetch import remove_eval_lines

    remove_eval_lines(a.train, a.exclude, a.out, log=log)


def cmd_lock(a):
    from relm.text.fetch import format_lock

    sys.stdout.write(format_lock(a.lock, a.format))


def cmd_tokenize(a):
    from relm.text.tokenize import tokenize_file

    tokenize_file(a.input, a.output, a.lang, threads=a.threads, max_line_chars=a.max_line_chars,
                  on_long_line=a.on_long_line, log=log)


def cmd_check_parallel(a):
    from relm.files import atomic_write_text
    from relm.text.tokenize import check_parallel

    n = check_parallel(a.src, a.tgt)
    if a.output:
        atomic_write_text(a.output, json.dumps({"src": a.src, "tgt": a.tgt, "lines": n}) + "\n")
    log(f"check-parallel: {a.src} and {a.tgt} have {n} lines each")


def cmd_bpe_learn(a):
    from relm.text.bpe import learn_codes

    learn_codes(a.inputs, a.codes, a.merges, log=log, workers=a.threads)


def cmd_bpe_apply(a):
    from relm.text.bpe import apply_file

    apply_file(a.codes, a.input, a.output, vocab=a.vocab, log=log, workers=a.threads)


def cmd_vocab_count(a):
    from relm.text.vocab import count_vocab

    count_vocab(a.inputs, a.output, log=log)


def cmd_vocab_extend(a):
    from relm.text.vocab import extend_vocab

    info = extend_vocab(a.hmr_vocab, a.lmr_vocab, a.out_dir, lmr=a.lmr, hmr=a.hmr, log=log)
    log(f"vocabulary extended by N={info['n_new']}: {info['ext_vocab']}")


def cmd_vocab_init_rows(a):
    from relm.config import ExtensionConfig, check, from_dict, load_settings
    from relm.model.newrows import init_rows

    cfg = check(from_dict(ExtensionConfig, load_settings(None, a.settings)), "extension.")
    init_rows(a.method, a.checkpoint, a.extension, a.vocab, a.out, codes=a.codes, hmr_text=a.hmr_text,
              lmr_text=a.lmr_text, cfg=cfg.aligned, seed=a.seed, log=log)


def cmd_binarize(a):
    from relm.data.corpus import binarize

    binarize(a.input, a.vocab, a.output, lang=a.lang, max_unk_rate=a.max_unk_rate, log=log)


# --- training ----------------------------------------------------------------------------------

def cmd_train(a):
    from relm.config import MLMConfig, UNMTConfig, check, from_dict, load_settings

    settings = load_settings(a.config, a.settings)
    common = dict(run_dir=a.run_dir, vocab=a.vocab, train=_pairs(a.train, "--train"),
                  valid=_pairs(a.valid, "--valid"), test=_pairs(a.test, "--test") or None,
                  init=a.init, out=a.out, metrics_out=a.metrics, log=log)
    if a.objective == "mlm":
        from relm.train.mlm import train_mlm

        train_mlm(check(from_dict(MLMConfig, settings)), extension=a.extension, ext_rows=a.ext_rows, **common)
    else:
        from relm.train.unmt import train_unmt

        train_unmt(check(from_dict(UNMTConfig, settings)), **common)


# --- generation and evaluation -----------------------------------------------------------------

def cmd_translate(a):
    from relm.translate import translate_file

    translate_file(a.model, a.input, a.output, src_lang=a.src_lang, tgt_lang=a.tgt_lang, codes=a.codes,
                   beam_size=a.beam_size, length_penalty=a.length_penalty, early_stopping=a.early_stopping,
                   batch_size=a.batch_size, tokens_per_batch=a.tokens_per_batch, max_len_a=a.max_len_a,
                   max_len_b=a.max_len_b, tok_out=a.tok_output, device=a.device)


def cmd_score(a):
    from relm.evaluate.score import score_file

    meta = dict(pair=a.pair, system=a.system, direction=a.direction, split=a.split, seed=a.seed)
    result = score_file(a.hyp, a.ref, a.tgt_lang, src=a.src, meta=meta, out=a.output)
    m = result["metrics"]
    log(f"BLEU {m['bleu']['score']:.2f}  chrF++ {m['chrf++']['score']:.2f}  "
        f"tokenized BLEU {m['tok_bleu']['score']:.2f}")


def cmd_tables(a):
    from relm.evaluate.tables import write_tables

    write_tables(a.scores, a.out_dir, baseline=a.baseline, bootstrap=not a.no_bootstrap)


def cmd_plots(a):
    from relm.evaluate.plots import plot_bleu_bars, plot_curves

    if a.metrics:
        plot_curves(_pairs(a.metrics, "--metrics"), a.curves)
    if a.scores_tsv:
        plot_bleu_bars(a.scores_tsv, a.bars)


def cmd_compute(a):
    from relm.evaluate.tables import write_compute_table

    write_compute_table(_pairs(a.benchmark, "--benchmark"), a.output, cores=a.cores)


def cmd_bpe_convert_codes(a):
    from relm.text.bpe import convert_fastbpe_codes

    convert_fastbpe_codes(a.input, a.output, log=log)


def cmd_import_xlm(a):
    from relm.model.xlm import convert_xlm_checkpoint

    expect = None
    if a.expect_model:
        try:
            expect = json.loads(a.expect_model)
        except json.JSONDecodeError as e:
            raise ValueError(f"--expect-model is not JSON ({e}): {a.expect_model!r}") from None
        if not isinstance(expect, dict):
            raise ValueError(f"--expect-model must be a JSON object of model settings, got {a.expect_model!r}")
    try:
        log(convert_xlm_checkpoint(a.input, a.output, vocab=a.vocab, expect_model=expect, summary=a.summary,
                                   kind=a.kind))
    except RelmError as e:
        if not a.origin:
            raise
        raise type(e)(f"{e} ({a.origin})") from None


def cmd_fetch_checkpoint(a):
    from relm.model.xlm import fetch_checkpoint

    try:
        source = json.loads(a.source)
    except json.JSONDecodeError as e:
        raise ValueError(f"--source is not JSON ({e}): {a.source!r}") from None
    if not isinstance(source, dict):
        raise ValueError(f"--source must be a JSON object, got {a.source!r}")
    fetch_checkpoint(source, a.out, retries=a.retries, timeout=a.timeout, retry_delay=a.retry_delay, log=log)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="relm", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="generate the built-in synthetic language pair")
    s.add_argument("--out-dir", required=True)
    s.add_argument("--hmr", required=True)
    s.add_argument("--lmr", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--settings", help="JSON of generator parameters (sizes, concepts, cognate rate)")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("fetch", help="acquire a corpus: local copy or verified download, optional sampling")
    s.add_argument("--source", required=True, help='JSON: {"path": P}, {"url": U[, "sha256": H]} or {"urls": [...]}')
    s.add_argument("--out", required=True)
    s.add_argument("--lines", type=int, default=0, help="deterministic sample of this many lines (0 = all)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--retries", type=int, default=5, help="download attempts after the first (default 5)")
    s.add_argument("--retry-delay", type=float, default=2.0,
                   help="back-off base in seconds, doubled per attempt, jittered; Retry-After wins (default 2)")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds without data before a retry (default 60)")
    s.add_argument("--lock", help="lock file: URLs without a sha256 are checked against it or recorded in it")
    s.add_argument("--mirrors", help='JSON {"URL prefix": "replacement"}: download from there instead')
    s.set_defaults(func=cmd_fetch)

    s = sub.add_parser("clean", help="remove the lines of valid/test sets from a train corpus")
    s.add_argument("--train", required=True)
    s.add_argument("--exclude", nargs="*", default=[], help="valid/test files whose lines are removed (may be none)")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_clean)

    s = sub.add_parser("lock", help="print the data lock (sha256, bytes, url of every locked download)")
    s.add_argument("--lock", default="data.lock")
    s.add_argument("--format", choices=["tsv", "md"], default="tsv")
    s.set_defaults(func=cmd_lock)

    s = sub.add_parser("tokenize", help="Moses normalization and tokenization (sacremoses)")
    s.add_argument("--input", required=True)
    s.add_argument("--output", required=True)
    s.add_argument("--lang", required=True)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--max-line-chars", type=int, default=10000,
                   help="longest raw line in characters (default 10000; 0 = no limit)")
    s.add_argument("--on-long-line", choices=("error", "skip"), default="error",
                   help="error (default; valid/test sets: dropping a line misaligns pairs) or skip (monolingual "
                        "train corpora: drop the line, count it in the log)")
    s.set_defaults(func=cmd_tokenize)

    s = sub.add_parser("check-parallel", help="check that two sides of a parallel set have the same line count")
    s.add_argument("--src", required=True)
    s.add_argument("--tgt", required=True)
    s.add_argument("--output", help="on success, write {src, tgt, lines} JSON here (a workflow flag file)")
    s.set_defaults(func=cmd_check_parallel)

    bpe = sub.add_parser("bpe", help="subword-nmt BPE").add_subparsers(dest="bpe_command", required=True)
    s = bpe.add_parser("learn", help="learn codes on the concatenation of the inputs")
    s.add_argument("--inputs", nargs="+", required=True)
    s.add_argument("--codes", required=True)
    s.add_argument("--merges", type=int, required=True)
    s.add_argument("--threads", type=int, default=1, help="processes counting words (0: every core)")
    s.set_defaults(func=cmd_bpe_learn)
    s = bpe.add_parser("apply", help="apply codes to a tokenized file")
    s.add_argument("--codes", required=True)
    s.add_argument("--input", required=True)
    s.add_argument("--output", required=True)
    s.add_argument("--vocab", help="vocabulary file: undo merges whose piece it lacks (fastBPE applybpe ... vocab)")
    s.add_argument("--threads", type=int, default=1, help="processes segmenting chunks of lines (0: every core)")
    s.set_defaults(func=cmd_bpe_apply)
    s = bpe.add_parser("convert-codes", help="fastBPE codes ('left right count') -> codes that relm reads")
    s.add_argument("--input", required=True, help="codes written by fastBPE learnbpe (e.g. a released model's)")
    s.add_argument("--output", required=True, help="subword-nmt '#version: 0.2' codes, the same merges")
    s.set_defaults(func=cmd_bpe_convert_codes)

    voc = sub.add_parser("vocab", help="vocabularies").add_subparsers(dest="vocab_command", required=True)
    s = voc.add_parser("count", help="count tokens (fastBPE getvocab order)")
    s.add_argument("--inputs", nargs="+", required=True)
    s.add_argument("--output", required=True)
    s.set_defaults(func=cmd_vocab_count)
    s = voc.add_parser("extend", help="RE-LM vocabulary extension: writes vocab.LMR-HMR-ext-by-N and its JSON sidecar")
    s.add_argument("--hmr-vocab", required=True)
    s.add_argument("--lmr-vocab", required=True)
    s.add_argument("--out-dir", required=True)
    s.add_argument("--lmr", required=True)
    s.add_argument("--hmr", required=True)
    s.set_defaults(func=cmd_vocab_extend)
    s = voc.add_parser("init-rows", help="starting rows of the extension's new tokens (extension.init other than "
                                         "random): writes OUT.npy and OUT.json")
    s.add_argument("--method", required=True, choices=("mean", "subword", "aligned"))
    s.add_argument("--checkpoint", required=True, help="the HMR MLM the extension applies to")
    s.add_argument("--extension", required=True, help="sidecar JSON of the vocabulary extension")
    s.add_argument("--vocab", required=True, help="the extended vocabulary (vocab.LMR-HMR-ext-by-N)")
    s.add_argument("--codes", help="subword: the HMR BPE codes")
    s.add_argument("--hmr-text", help="aligned: the HMR training text, BPE'd with the HMR codes")
    s.add_argument("--lmr-text", help="aligned: the LMR training text, BPE'd with the joint codes")
    s.add_argument("--settings", help="the config's `extension` section as JSON (aligned: skip-gram and map)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="the rows (.npy); the sidecar gets the suffix .json")
    s.set_defaults(func=cmd_vocab_init_rows)

    s = sub.add_parser("binarize", help="token ids as a memory-mapped flat array + offsets")
    s.add_argument("--input", required=True)
    s.add_argument("--vocab", required=True)
    s.add_argument("--output", required=True, help="the corpus JSON path (siblings .tok.npy, .off.npy)")
    s.add_argument("--lang", required=True)
    s.add_argument("--max-unk-rate", type=float, default=0.5,
                   help="fail if more than this fraction of tokens is unknown to the vocabulary: a wrong vocabulary "
                        "(default 0.5; 1 = never)")
    s.set_defaults(func=cmd_binarize)

    train = sub.add_parser("train", help="training").add_subparsers(dest="objective", required=True)
    for name, what in (("mlm", "masked-LM pretraining / fine-tuning"), ("unmt", "unsupervised NMT (DAE + BT)")):
        s = train.add_parser(name, help=what)
        s.add_argument("--run-dir", required=True, help="checkpoints, resolved config; rerun = resume")
        s.add_argument("--config", help="run config YAML")
        s.add_argument("--settings", help="run config as JSON (overrides --config)")
        s.add_argument("--vocab", required=True, help="vocabulary file of the model's dictionary")
        s.add_argument("--train", action="append", required=True, metavar="LANG=CORPUS")
        s.add_argument("--valid", action="append", metavar="LANG=CORPUS")
        s.add_argument("--test", action="append", metavar="LANG=CORPUS")
        s.add_argument("--init", help="checkpoint to start from")
        s.add_argument("--out", help="where to copy the best model")
        s.add_argument("--metrics", help="where to write the metrics history (JSON lines)")
        if name == "mlm":
            s.add_argument("--extension", help="sidecar JSON of the vocabulary extension (RE-LM)")
            s.add_argument("--ext-rows", help="the new rows of the extension (.npy from relm vocab init-rows), for "
                                              "extension_init other than random")
        s.set_defaults(func=cmd_train)

    s = sub.add_parser("translate", help="translate raw text with a UNMT model")
    s.add_argument("--model", required=True)
    s.add_argument("--src-lang", required=True)
    s.add_argument("--tgt-lang", required=True)
    s.add_argument("--codes", required=True, help="BPE codes of the source side")
    s.add_argument("--input", default="-")
    s.add_argument("--output", default="-")
    s.add_argument("--tok-output", help="also write Moses-tokenized, BPE-removed output (tokenized BLEU)")
    s.add_argument("--beam-size", type=int, default=1)
    s.add_argument("--length-penalty", type=float, default=1.0)
    s.add_argument("--early-stopping", action="store_true")
    s.add_argument("--batch-size", type=int, default=32, help="sentences per batch")
    s.add_argument("--tokens-per-batch", type=int, default=0,
                   help="also at most this many source tokens (padded) per batch; 0 = sentences only")
    s.add_argument("--max-len-a", type=float, default=1.5, help="max output length = a * source length + b")
    s.add_argument("--max-len-b", type=int, default=10)
    s.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda")
    s.set_defaults(func=cmd_translate)

    s = sub.add_parser("score", help="sacreBLEU BLEU/chrF++ + the original's tokenized BLEU")
    s.add_argument("--hyp", required=True)
    s.add_argument("--ref", required=True)
    s.add_argument("--src", help="source text, for the copy baseline")
    s.add_argument("--tgt-lang", required=True)
    s.add_argument("--output", required=True)
    for key in ("pair", "system", "direction", "split"):
        s.add_argument(f"--{key}", required=True)
    s.add_argument("--seed", type=int, default=0, help="training seed of the system (config `seeds`)")
    s.set_defaults(func=cmd_score)

    s = sub.add_parser("tables", help="scores.tsv, bleu.md, bleu.tex from score files")
    s.add_argument("--scores", nargs="+", required=True)
    s.add_argument("--out-dir", required=True)
    s.add_argument("--baseline", default="xlm")
    s.add_argument("--no-bootstrap", action="store_true")
    s.set_defaults(func=cmd_tables)

    s = sub.add_parser("plots", help="training curves and the BLEU bar chart")
    s.add_argument("--metrics", action="append", metavar="LABEL=METRICS_JSONL")
    s.add_argument("--curves")
    s.add_argument("--scores-tsv")
    s.add_argument("--bars")
    s.set_defaults(func=cmd_plots)

    s = sub.add_parser("compute", help="wall time and peak memory per stage from benchmark files")
    s.add_argument("--benchmark", action="append", required=True, metavar="LABEL=TSV")
    s.add_argument("--output", required=True)
    s.add_argument("--cores", type=int, default=0, help="the cores the workflow ran on: adds busy/idle core-minutes")
    s.set_defaults(func=cmd_compute)

    s = sub.add_parser("import-xlm", help="convert an XLM / RE-LM checkpoint into relm's format (no code executed)")
    s.add_argument("input")
    s.add_argument("output")
    s.add_argument("--vocab", help="the vocabulary file the checkpoint was trained with (fastBPE getvocab format): "
                                   "its 14 + N ids must be the checkpoint's embedding rows and dictionary")
    s.add_argument("--expect-model", metavar="JSON",
                   help='architecture the checkpoint must have, e.g. \'{"dim": 1024, "n_layers": 6, "n_heads": 8, '
                        '"pre_norm": false, "gelu": true}\' (keys may be config keys such as "model.dim")')
    s.add_argument("--summary", help="write what was imported and checked (with sha256s) here as JSON")
    s.add_argument("--origin", help="where the files came from, added to an error (the workflow names its config)")
    s.add_argument("--kind", choices=("mlm", "unmt"), help="the kind of model the checkpoint must hold")
    s.set_defaults(func=cmd_import_xlm)

    s = sub.add_parser("fetch-checkpoint", help="acquire a checkpoint file as it is: verified download or local link")
    s.add_argument("--source", required=True, help='JSON: {"path": P[, "sha256": H]} or {"url": U, "sha256": H}')
    s.add_argument("--out", required=True)
    s.add_argument("--retries", type=int, default=5, help="download attempts after the first (default 5)")
    s.add_argument("--retry-delay", type=float, default=2.0, help="back-off base in seconds (default 2)")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds without data before a retry (default 60)")
    s.set_defaults(func=cmd_fetch_checkpoint)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except Exception as e:  # bad input and broken checkpoints: one clear line, no traceback
        if isinstance(e, (RelmError, FileNotFoundError, ValueError)):
            raise SystemExit(f"relm {args.command}: error: {e}")
        raise


if __name__ == "__main__":
    main()
