"""How well a masked LM's token embeddings have learned the word translation of the synthetic pair: nearest-neighbour
word-translation accuracy on the words the two languages spell differently.

    python -m bench.word_translation --config config/tiny-lmr.yaml --pair lx-hx MODEL.pt [MODEL.pt ...] [--json OUT]

The pair's generator (the `synthetic` block that config's `data.<pair>` sources name) is rebuilt to get the true
lexicon. Test words: every LMR word form that is not spelled like an HMR word, with its HMR translation
(relm.text.synth.SynthPair.word_translate), when both are whole-word tokens of the checkpoint's dictionary. Shared
spellings are only counted: the forms identical to their translation, and the LMR present verbs spelled like the HMR
base form while translated by the 3rd person (`clam` -> `clams`), whose token is an HMR word too. Candidates: the
whole-word tokens of the HMR translations of all lexicon forms, identical ones included, so that retrieval is among
real HMR words (no BPE pieces, no LMR-only words); the query's own token is never a candidate. A test word scores at
k when its translation is among the k candidates nearest to it by cosine similarity of the input embeddings
(`embeddings.weight`). Chance is 1/|candidates| at 1 and 5/|candidates| at 5.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml

from relm.model.checkpoint import load_start, strip_module_prefix
from relm.text.synth import SynthPair

SYNTH_ARGS = ("n_concepts", "cognate_rate", "n_names", "zipf")  # the settings generate_pair hands to SynthPair


def build_pair(config: dict, pair: str) -> tuple[SynthPair, str, str]:
    """The SynthPair of the generator that `pair`'s data come from, and its (lmr, hmr) language codes."""
    sources = config.get("data", {}).get(pair) or {}
    names = {src["synthetic"] for src in sources.values() if isinstance(src, dict) and "synthetic" in src}
    if len(names) != 1:
        raise SystemExit(f"word_translation: data.{pair} must come from exactly one synthetic generator, got "
                         f"{sorted(names) or 'none'}")
    name = names.pop()
    block = config["synthetic"][name]
    seed = block.get("seed", config.get("seed", 0))  # as rules/data.smk + `relm synth`: a generator may have its own
    synth = SynthPair(seed, **{k: block[k] for k in SYNTH_ARGS if k in block})
    return synth, block["lmr"], block["hmr"]


def lexicon(synth: SynthPair) -> list[tuple[str, str, bool]]:
    """(LMR form, HMR translation, whether the form is spelled like an HMR word) for every LMR form of the lexicon."""
    out = []
    for forms in synth.l.values():
        for entry in forms:
            for form in entry:
                hmr = synth.word_translate([form], "lmr")[0]
                out.append((form, hmr[:1].lower() + hmr[1:], form in synth.h_ana))  # capitalized: a first word
    return out


def evaluate(path: str, pairs: list[tuple[str, str, bool]], lmr: str) -> dict:
    ck = load_start(path, kinds=("mlm",))
    emb = strip_module_prefix(ck["model"])["embeddings.weight"].float()
    # a token without "@@" is a whole word or a word-final piece; either way it spells the whole word here
    index = {w: i for i, w in enumerate(ck["words"]) if not w.endswith("@@")}
    known = [(lw, hw, shared) for lw, hw, shared in pairs if lw in index and hw in index]
    tests = [(index[lw], index[hw]) for lw, hw, shared in known if not shared]
    cands = sorted({index[hw] for _, hw, _ in pairs if hw in index})
    row = {"model": path, "langs": list(ck["langs"]), "n_test": len(tests),
           "n_shared_excluded": len(known) - len(tests), "n_candidates": len(cands),
           "acc@1": None, "acc@5": None, "chance@1": 1 / len(cands) if cands else None}
    if lmr not in ck["langs"]:
        row["note"] = f"the model has no {lmr!r} language (langs {ck['langs']})"
    if not tests:
        return row
    unit = torch.nn.functional.normalize(emb, dim=1)
    queries = torch.tensor([q for q, _ in tests])
    cand = torch.tensor(cands)
    sim = unit[queries] @ unit[cand].T
    sim[cand.unsqueeze(0) == queries.unsqueeze(1)] = float("-inf")  # the query's own token, if an HMR word too
    top = cand[sim.topk(min(5, len(cands)), dim=1).indices]
    gold = torch.tensor([g for _, g in tests]).unsqueeze(1)
    row["acc@1"] = (top[:, :1] == gold).any(1).sum().item() / len(tests)
    row["acc@5"] = (top == gold).any(1).sum().item() / len(tests)
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="the workflow config YAML the data were made with")
    ap.add_argument("--pair", required=True, help="LMR-HMR pair, e.g. lx-hx")
    ap.add_argument("--json", default=None, help="write the figures here (a list of dicts, one per model)")
    ap.add_argument("models", nargs="+", help="MLM checkpoints (model.pt)")
    a = ap.parse_args(argv)
    config = yaml.safe_load(Path(a.config).read_text()) or {}
    synth, lmr, hmr = build_pair(config, a.pair)
    pairs = lexicon(synth)
    n_same = sum(lw == hw for lw, hw, _ in pairs)
    n_shared = sum(shared for _, _, shared in pairs)
    print(f"lexicon {lmr}->{hmr}: {len(pairs)} LMR forms, {n_same} spelled like their HMR translation and "
          f"{n_shared - n_same} like another HMR form; {len({hw for _, hw, _ in pairs})} distinct HMR translations")
    rows = []
    for path in a.models:
        row = evaluate(path, pairs, lmr)
        rows.append(row)
        if row["n_test"]:
            print(f"{path}: {row['n_test']} test words, acc@1 {row['acc@1']:.3f}, acc@5 {row['acc@5']:.3f} "
                  f"(chance@1 {row['chance@1']:.4f} among {row['n_candidates']} HMR candidates; "
                  f"{row['n_shared_excluded']} shared spellings excluded)")
        else:
            print(f"{path}: 0 test words (no LMR-only form and its translation are both whole-word tokens; "
                  f"{row['n_shared_excluded']} shared spellings excluded)")
        if "note" in row:
            print(f"  note: {row['note']}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
