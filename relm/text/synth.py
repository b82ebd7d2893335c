"""A seeded artificial language pair for relm's built-in demo and CI.

Both languages realize the same abstract sentences ([ADV ,] SUBJ VERB [OBJ] [PREP NP], NP = name | [NUM|DET] [ADJ]
NOUN) over a few hundred concepts with Zipfian frequencies, each with its own lexicon, word order, inflection and
function words:

* HMR ("hx"), English-like: SVO, adjective before noun, prepositions, articles (the/a/an), plural -s,
  3rd person -s, past -ed.
* LMR ("lx"): verb-final (S O PP V), adjective after noun, postpositions, one definite article (no indefinite
  one), a sentence-final question particle, suffixes for plural and accusative (definite objects only) on nouns and
  for past tense on verbs, its own sound inventory (with č, š, ž).

Names and numbers are identical in both, and a fraction (`cognate_rate`) of the LMR lexemes are cognates of the HMR
ones (70% spelled like the HMR stem, the rest with one vowel changed or an ending added). Such shared spellings, the
anchors that real related languages have in cognates and loanwords, decide whether UNMT can learn a pair at all in a
few CPU minutes: with only names and numbers shared, a probe on 2 CPU cores stayed near 2-3 BLEU. Cognates are
spread evenly over the frequency ranks, so about `cognate_rate` of the content tokens are cognates too; only the
unmarked LMR forms can be spelled like an HMR word, which is why LMR leaves the commonest forms unmarked.

The monolingual corpora are sampled independently; valid and test are parallel (one structure realized in both
languages) and none of their lines occurs in the monolingual corpora or in the other split. Everything is driven
by private random.Random instances seeded from `seed`, so the same arguments give byte-identical files.
"""
from __future__ import annotations

import bisect
import random
import time
from pathlib import Path

from relm.files import atomic_output

NOUN, VERB, ADJ, PREP, ADV = "NOUN", "VERB", "ADJ", "PREP", "ADV"
CLASSES = (NOUN, VERB, ADJ, PREP, ADV)
CLASS_SHARES = {NOUN: 0.54, VERB: 0.20, ADJ: 0.22, PREP: 0.02, ADV: 0.02}
NUMBERS = ("2", "3", "4", "5", "6", "7", "8", "9", "10", "12", "20", "100")
PUNCT = (",", ".", "?")
VOWELS = "aeiou"

# probabilities of the optional parts of a sentence
P_ADV, P_QUESTION, P_PAST, P_OBJ, P_PP = 0.12, 0.10, 0.40, 0.80, 0.40
P_NAME, P_ADJ, P_NUM, P_PLURAL, P_DEF = 0.12, 0.35, 0.08, 0.30, 0.60

# sound inventories (onset, nucleus, coda); empty strings repeat to weight them
H_ONSETS = "b c d f g h l m n p r s t w br cl dr fl gr pl st tr sp th sh wh".split()
H_NUCLEI = "a e i o u ea oo ai ou".split()
H_CODAS = ["", "", "", "n", "r", "t", "d", "ck", "st", "ll", "m", "ng", "sh", "nd", "rt"]
L_ONSETS = "k z v r š č ž n m l t d j g b p s h dž".split()
L_NUCLEI = "a o u i e a o".split()
L_CODAS = ["", "", "", "", "n", "k", "j", "š", "v", "r"]
N_ONSETS = "M T K L R S N D B V".split()
N_NUCLEI = "a e i o".split()
N_CODAS = ["", "", "n", "s", "l", "r", "k"]

H_ARTICLES = ("the", "a", "an")
COGNATE_IDENTICAL = 0.7  # share of cognates spelled exactly like the HMR stem (the rest: one vowel changed / ending)


def zipf_cum(n: int, s: float) -> list[float]:
    """Cumulative Zipf weights 1/r^s for ranks 1..n (for bisect sampling)."""
    cum, tot = [], 0.0
    for r in range(1, n + 1):
        tot += r ** -s
        cum.append(tot)
    return cum


def _ends_vowel(w: str) -> bool:
    return w[-1] in VOWELS


def h_forms(cls: str, s: str) -> tuple[str, ...]:
    """HMR forms: NOUN (sg, pl), VERB (base, 3sg, past), others (s,)."""
    if cls in (NOUN, VERB):
        plural = s + ("es" if s.endswith(("s", "sh", "ch", "x", "z")) else "s")
        if cls == NOUN:
            return (s, plural)
        return (s, plural, s + ("d" if s.endswith("e") else "ed"))
    return (s,)


def l_forms(cls: str, s: str) -> tuple[str, ...]:
    """LMR forms: NOUN [plural*2 + accusative], VERB [past], others (s,).

    The unmarked forms are the most frequent ones on purpose: only they can be spelled like their HMR cognates.
    """
    if cls == NOUN:
        return tuple(b + a for b in (s, s + "ki") for a in ("", "m" if _ends_vowel(b) else "um"))
    if cls == VERB:
        return (s, s + ("ri" if _ends_vowel(s) else "iri"))
    return (s,)


def _hit(i: int, rate: float, phase: float) -> bool:
    """Bresenham selection: true for a `rate` share of i = 0, 1, 2, ..., evenly spaced."""
    return int((i + 1) * rate + phase) > int(i * rate + phase)


def _cap(w: str) -> str:
    return w[:1].upper() + w[1:]


def detokenize(words: list[str]) -> str:
    """Join tokens into raw text: punctuation sticks to the word before it."""
    return " ".join(words).replace(" ,", ",").replace(" .", ".").replace(" ?", "?")


class SynthPair:
    """The lexicons of both languages and the grammar; `sample` draws a structure, `words` realizes it.

    A structure is a tuple (adv, subj, verb, past, obj, prep, pp, question) with -1/None for absent parts; a noun
    phrase is (name, noun, plural, definite, adj, number) with name or noun = -1 and number "" when absent.
    """

    def __init__(self, seed: int = 0, n_concepts: int = 500, cognate_rate: float = 0.5, n_names: int = 40,
                 zipf: float = 1.0):
        if not 0.0 <= cognate_rate <= 1.0:
            raise ValueError(f"cognate_rate must be in [0, 1], got {cognate_rate}")
        if n_concepts < 20:
            raise ValueError(f"n_concepts must be >= 20, got {n_concepts}")
        self.seed, self.cognate_rate = seed, cognate_rate
        rng = random.Random(f"relm-synth-lexicon-{seed}")
        n = {c: max(3, round(CLASS_SHARES[c] * n_concepts)) for c in CLASSES}
        self.h = {c: [] for c in CLASSES}  # per class, per rank: tuple of forms
        self.l = {c: [] for c in CLASSES}
        self.cognate = {c: [] for c in CLASSES}
        self.cum = {c: zipf_cum(n[c], zipf) for c in CLASSES}
        # analysis tables: form -> (class, index, form slot), names/numbers/function words aside
        self.h_ana: dict[str, tuple[str, int, int]] = {}
        self.l_ana: dict[str, tuple[str, int, int]] = {}

        taken_h = set(H_ARTICLES)
        for c in CLASSES:
            for r in range(n[c]):
                syll = 1 if r < 60 or rng.random() < 0.3 else 2
                while True:
                    stem = "".join(rng.choice(H_ONSETS) + rng.choice(H_NUCLEI) for _ in range(syll))
                    stem += rng.choice(H_CODAS)
                    forms = h_forms(c, stem)
                    if len(stem) >= 2 and not taken_h.intersection(forms):
                        break
                taken_h.update(forms)
                self._add(self.h, self.h_ana, c, forms)

        def l_word(syll):
            return "".join(rng.choice(L_ONSETS) + rng.choice(L_NUCLEI) for _ in range(syll)) + rng.choice(L_CODAS)

        taken_l: set[str] = set()
        self.l_def, self.l_q = None, None
        while self.l_def is None or self.l_q == self.l_def or {self.l_def, self.l_q} & taken_h:
            self.l_def, self.l_q = l_word(1), l_word(1)
        taken_l |= {self.l_def, self.l_q}
        # an LMR form may equal an HMR form only if both belong to the same concept (a cognate)
        bad_h = dict((f, (c, i)) for f, (c, i, _) in self.h_ana.items())
        for a in H_ARTICLES:
            bad_h[a] = None
        for c in CLASSES:
            # cognates, and among them identical spellings, are spread evenly over the frequency ranks, so that
            # the shared share of the running text follows the rates closely whatever the seed
            phase, phase_same, k = rng.random(), rng.random(), 0
            for r in range(n[c]):
                want = _hit(r, cognate_rate, phase)
                same = want and _hit(k, COGNATE_IDENTICAL, phase_same)
                k += want
                forms, cog = None, False
                for attempt in range(60):
                    if want and attempt < 30:
                        h_stem = self.h[c][r][0]
                        stem = h_stem if same and attempt == 0 else self._cognate(rng, h_stem)
                    else:
                        stem = l_word(2 if r < 60 or rng.random() < 0.6 else 3)
                    forms = l_forms(c, stem)
                    if len(stem) < 2 or taken_l.intersection(forms):
                        continue
                    if any(bad_h.get(f, (c, r)) != (c, r) for f in forms):
                        continue
                    cog = want and attempt < 30
                    break
                else:
                    raise RuntimeError("could not generate a unique LMR word; use more sound combinations")
                taken_l.update(forms)
                self.cognate[c].append(cog)
                self._add(self.l, self.l_ana, c, forms)

        all_caps = {_cap(f) for f in taken_h | taken_l}
        self.names: list[str] = []
        while len(self.names) < n_names:
            w = rng.choice(N_ONSETS) + rng.choice(N_NUCLEI) + rng.choice(N_ONSETS).lower() + rng.choice(N_NUCLEI)
            w += rng.choice(N_CODAS)
            if w not in all_caps and w not in self.names:
                self.names.append(w)
        self.name_set = set(self.names)
        self.cum["name"] = zipf_cum(n_names, zipf)

    @staticmethod
    def _add(table, ana, c, forms):
        i = len(table[c])
        table[c].append(forms)
        for slot, f in enumerate(forms):
            ana.setdefault(f, (c, i, slot))

    @staticmethod
    def _cognate(rng: random.Random, stem: str) -> str:
        """A near-identical form: one vowel changed, or an ending added."""
        if rng.random() < 0.5:
            pos = [i for i, ch in enumerate(stem) if ch in VOWELS]
            if pos:
                i = rng.choice(pos)
                return stem[:i] + rng.choice([v for v in VOWELS if v != stem[i]]) + stem[i + 1:]
        return stem + (rng.choice("jvn") if _ends_vowel(stem) else rng.choice("aoiu"))

    @property
    def n_cognates(self) -> int:
        return sum(sum(v) for v in self.cognate.values())

    def sizes(self) -> dict[str, int]:
        return {c.lower(): len(self.h[c]) for c in CLASSES} | {"name": len(self.names)}

    # -- sampling -------------------------------------------------------------------------------------------
    def _draw(self, rng: random.Random, c: str) -> int:
        cum = self.cum[c]
        return bisect.bisect_right(cum, rng.random() * cum[-1])

    def _np(self, rng: random.Random) -> tuple:
        if rng.random() < P_NAME:
            return (self._draw(rng, "name"), -1, False, False, -1, "")
        noun = self._draw(rng, NOUN)
        adj = self._draw(rng, ADJ) if rng.random() < P_ADJ else -1
        if rng.random() < P_NUM:
            return (-1, noun, True, False, adj, rng.choice(NUMBERS))
        return (-1, noun, rng.random() < P_PLURAL, rng.random() < P_DEF, adj, "")

    def sample(self, rng: random.Random) -> tuple:
        adv = self._draw(rng, ADV) if rng.random() < P_ADV else -1
        subj = self._np(rng)
        verb, past = self._draw(rng, VERB), rng.random() < P_PAST
        obj = self._np(rng) if rng.random() < P_OBJ else None
        prep, pp = (self._draw(rng, PREP), self._np(rng)) if rng.random() < P_PP else (-1, None)
        return (adv, subj, verb, past, obj, prep, pp, rng.random() < P_QUESTION)

    # -- realization ----------------------------------------------------------------------------------------
    def _h_np(self, np_: tuple, out: list) -> None:
        name, noun, plural, definite, adj, number = np_
        if name >= 0:
            out.append(self.names[name])
            return
        a = self.h[ADJ][adj][0] if adj >= 0 else None
        n = self.h[NOUN][noun][plural]
        if number:
            out.append(number)
        elif definite:
            out.append("the")
        elif not plural:
            out.append("an" if (a or n)[0] in VOWELS else "a")
        if a:
            out.append(a)
        out.append(n)

    def _l_np(self, np_: tuple, obj: bool, out: list) -> None:
        name, noun, plural, definite, adj, number = np_
        if name >= 0:
            out.append(self.names[name])
            return
        if number:
            out.append(number)
        elif definite:
            out.append(self.l_def)
        out.append(self.l[NOUN][noun][plural * 2 + (obj and definite)])  # differential object marking
        if adj >= 0:
            out.append(self.l[ADJ][adj][0])

    def words(self, s: tuple, side: str) -> list[str]:
        """Tokens of structure `s` in language side "hmr" or "lmr" (first word capitalized, punctuation split)."""
        adv, subj, verb, past, obj, prep, pp, question = s
        out: list[str] = []
        if side == "hmr":
            if adv >= 0:
                out += [self.h[ADV][adv][0], ","]
            self._h_np(subj, out)
            out.append(self.h[VERB][verb][2 if past else 1 if not subj[2] else 0])
            if obj:
                self._h_np(obj, out)
            if pp:
                out.append(self.h[PREP][prep][0])
                self._h_np(pp, out)
        elif side == "lmr":
            if adv >= 0:
                out += [self.l[ADV][adv][0], ","]
            self._l_np(subj, False, out)
            if obj:
                self._l_np(obj, True, out)
            if pp:
                self._l_np(pp, False, out)
                out.append(self.l[PREP][prep][0])
            out.append(self.l[VERB][verb][past])
            if question:
                out.append(self.l_q)
        else:
            raise ValueError(f"side must be 'hmr' or 'lmr', got {side!r}")
        out.append("?" if question else ".")
        out[0] = _cap(out[0])
        return out

    def realize(self, s: tuple, side: str) -> str:
        return detokenize(self.words(s, side))

    # -- analysis (oracle) ----------------------------------------------------------------------------------
    def analyze(self, word: str, side: str) -> tuple[str, int, int]:
        """(class, index, form slot) of a token; class is also NAME, NUM, PUNCT, DET, PART or UNK."""
        if word in PUNCT:
            return ("PUNCT", -1, -1)
        if word in self.name_set:
            return ("NAME", self.names.index(word), -1)
        if word.isdigit():
            return ("NUM", -1, -1)
        ana = self.h_ana if side == "hmr" else self.l_ana
        for w in (word, word[:1].lower() + word[1:]):
            if w in ana:
                return ana[w]
            if side == "hmr" and w in H_ARTICLES:
                return ("DET", -1, -1)
            if side == "lmr" and w in (self.l_def, self.l_q):
                return ("PART", -1, -1)
        return ("UNK", -1, -1)

    def word_translate(self, words: list[str], side: str) -> list[str]:
        """Word-by-word oracle translation of tokens from `side` with the true lexicon, no reordering.

        Function words (articles, particles) are dropped; names, numbers and punctuation are copied; LMR nouns come
        out unmarked, verbs keep their tense.
        """
        out = []
        for w in words:
            c, i, slot = self.analyze(w, side)
            if c in ("DET", "PART"):
                continue
            if c in ("PUNCT", "NAME", "NUM", "UNK"):
                out.append(w)
            elif side == "hmr":
                tgt = self.l[c][i]
                if c == NOUN:
                    out.append(tgt[slot * 2])
                elif c == VERB:
                    out.append(tgt[slot == 2])
                else:
                    out.append(tgt[0])
            else:
                tgt = self.h[c][i]
                if c == NOUN:
                    out.append(tgt[slot // 2])
                elif c == VERB:  # present: the 3rd person singular is the commoner HMR form
                    out.append(tgt[2] if slot else tgt[1])
                else:
                    out.append(tgt[0])
        if out:
            out[0] = _cap(out[0])
        return out


def _write_lines(path: Path, lines: list[str]) -> None:
    with atomic_output(path) as f:
        f.write("\n".join(lines) + "\n" if lines else "")


def generate_pair(out_dir, hmr: str = "hx", lmr: str = "lx", seed: int = 0, n_hmr: int = 100000,
                  n_lmr: int = 10000, n_valid: int = 500, n_test: int = 500, n_concepts: int = 500,
                  cognate_rate: float = 0.5, n_names: int = 40, zipf: float = 1.0, log=print) -> dict:
    """Write train/valid/test.{hmr,lmr} (raw text) to out_dir; return a summary (counts, types, cognates)."""
    t0 = time.time()
    pair = SynthPair(seed, n_concepts, cognate_rate, n_names, zipf)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats = {side: {"types": set(), "tokens": 0, "lines": 0} for side in ("hmr", "lmr")}

    def count(side, words):
        st = stats[side]
        st["types"].update(words)
        st["tokens"] += len(words)
        st["lines"] += 1

    # held-out parallel sets first, from their own generator, so they do not depend on the corpus sizes
    rng = random.Random(f"relm-synth-heldout-{seed}")
    seen = {"hmr": set(), "lmr": set()}
    held = {"valid": ([], []), "test": ([], [])}
    for split, n in (("valid", n_valid), ("test", n_test)):
        hl, ll = held[split]
        tries = 0
        while len(hl) < n:
            tries += 1
            if tries > 50 * n + 1000:
                raise ValueError(f"cannot draw {n} distinct {split} sentences; raise n_concepts")
            s = pair.sample(rng)
            hw, lw = pair.words(s, "hmr"), pair.words(s, "lmr")
            h, l = detokenize(hw), detokenize(lw)
            if h in seen["hmr"] or l in seen["lmr"]:
                continue
            seen["hmr"].add(h)
            seen["lmr"].add(l)
            hl.append(h)
            ll.append(l)
            count("hmr", hw)
            count("lmr", lw)

    mono = {}
    for side, n in (("hmr", n_hmr), ("lmr", n_lmr)):
        rng = random.Random(f"relm-synth-mono-{side}-{seed}")
        lines, rejected, ban = [], 0, seen[side]
        while len(lines) < n:
            w = pair.words(pair.sample(rng), side)
            line = detokenize(w)
            if line in ban:
                rejected += 1
                if rejected > 10 * n + 1000:
                    raise ValueError("too many mono sentences collide with valid/test; raise n_concepts")
                continue
            lines.append(line)
            count(side, w)
        mono[side] = (lines, rejected)

    files = {}
    for side, lang in (("hmr", hmr), ("lmr", lmr)):
        k = 0 if side == "hmr" else 1
        for split, lines in (("train", mono[side][0]), ("valid", held["valid"][k]), ("test", held["test"][k])):
            p = out / f"{split}.{lang}"
            _write_lines(p, lines)
            files[f"{split}.{lang}"] = str(p)

    summary = {
        "seed": seed, "hmr": hmr, "lmr": lmr, "files": files,
        "lines": {name: len(v) for name, v in
                  ((f"train.{hmr}", mono["hmr"][0]), (f"train.{lmr}", mono["lmr"][0]),
                   (f"valid.{hmr}", held["valid"][0]), (f"valid.{lmr}", held["valid"][1]),
                   (f"test.{hmr}", held["test"][0]), (f"test.{lmr}", held["test"][1]))},
        "concepts": pair.sizes(), "n_concepts": sum(len(v) for v in pair.h.values()),
        "cognates": pair.n_cognates, "cognate_rate": cognate_rate,
        # over all files of a language; tokens split off punctuation as Moses would, case kept, punctuation counted
        "types": {lang: len(stats[side]["types"]) for side, lang in (("hmr", hmr), ("lmr", lmr))},
        "mean_len": {lang: round(stats[side]["tokens"] / max(1, stats[side]["lines"]), 2)
                     for side, lang in (("hmr", hmr), ("lmr", lmr))},
        "rejected": {hmr: mono["hmr"][1], lmr: mono["lmr"][1]},
        "seconds": round(time.time() - t0, 2),
    }
    log(f"synth: {summary['lines']} types {summary['types']} mean_len {summary['mean_len']} "
        f"cognates {summary['cognates']}/{summary['n_concepts']} in {summary['seconds']}s -> {out}")
    return summary
