# Configuration checks, path helpers and input functions shared by every rule file.

import json
from pathlib import Path

from snakemake.utils import min_version, validate

from relm.config import MLMConfig, UNMTConfig, TranslateConfig, from_dict, merge

min_version("9.0")

validate(config, "../config/schema.yaml")

HMR = config["hmr"]
PAIRS = list(config["pairs"])
SYSTEMS = list(config["systems"])
SPLITS = ["train", "valid", "test"]


def lmr_of(pair):
    return pair.split("-")[0]


def directions(pair):
    lmr, hmr = pair.split("-")
    return [f"{hmr}-{lmr}", f"{lmr}-{hmr}"]


def check_config():
    """Checks the schema cannot express; each error names the config key."""
    for pair in PAIRS:
        lmr, hmr = pair.split("-")
        if hmr != HMR:
            raise ValueError(f"config key 'pairs': pair {pair!r} must end with the HMR language '-{HMR}'")
    needed = {HMR: [f"{s}.{HMR}" for s in SPLITS]}
    for pair in PAIRS:
        lmr = lmr_of(pair)
        needed[pair] = [f"train.{lmr}"] + [f"{s}.{l}" for s in ("valid", "test") for l in (lmr, HMR)]
    for group, keys in needed.items():
        have = config["data"].get(group, {})
        for key in keys:
            if key not in have:
                raise ValueError(f"config key 'data.{group}.{key}' is missing (a source for this corpus)")
        for key, src in have.items():
            if "synthetic" in src and src["synthetic"] not in config.get("synthetic", {}):
                raise ValueError(f"config key 'data.{group}.{key}.synthetic': no generator "
                                 f"{src['synthetic']!r} under 'synthetic'")
            if "path" in src and not Path(src["path"]).is_file():
                raise ValueError(f"config key 'data.{group}.{key}.path': file not found: {src['path']}")
    # The stage sections must build their dataclasses (unknown keys are named).
    for pair in PAIRS:
        for stage in ("pretrain", "finetune", "adapters", "xlm"):
            mlm_settings(stage, pair)
        for system in SYSTEMS:
            unmt_settings(system, pair)
    from_dict(TranslateConfig, config.get("translate"), "translate.")


wildcard_constraints:
    lang="[a-z]{2,3}",
    src="[a-z]{2,3}",
    tgt="[a-z]{2,3}",
    pair="[a-z]{2,3}-[a-z]{2,3}",
    group="[a-z]{2,3}(-[a-z]{2,3})?",
    split="train|valid|test",
    codes="hmr|joint",
    dic="hmr|relm|xlm",
    system="xlm|relm|relm_adapters",
    name="[A-Za-z0-9_]+",


# --- paths ------------------------------------------------------------------------------------


def bin_path(group, dic, split, lang):
    return f"data/{group}/bin-{dic}/{split}.{lang}.json"


def binarized(dic, pair, split, lang):
    """Corpus of `lang` for a system's dictionary. RE-LM reuses the HMR train corpus binarized with the HMR
    vocabulary: the extended dictionary keeps its ids (no copy, no manual link)."""
    if dic == "relm" and lang == HMR and split == "train":
        return bin_path(HMR, "hmr", "train", HMR)
    return bin_path(pair, dic, split, lang)


def ext_sidecar(pair):
    return f"data/{pair}/vocab.{pair}-ext.json"


def ext_vocab(wildcards):
    """vocab.{lmr}-{hmr}-ext-by-{N}: N is read from the sidecar once the extension has run."""
    pair = wildcards.pair if hasattr(wildcards, "pair") else wildcards.group
    sidecar = checkpoints.extend_vocab.get(pair=pair).output.sidecar
    return json.loads(Path(sidecar).read_text())["ext_vocab"]


def system_vocab(wildcards):
    return ext_vocab(wildcards) if wildcards.system != "xlm" else f"data/{wildcards.pair}/vocab.joint"


def dic_of(system):
    return "xlm" if system == "xlm" else "relm"


# --- settings passed to `relm train` (resolved again and written by the run itself) ------------


def _fill(value, pair):
    """Fill {hmr} / {lmr} in string settings (metric names depend on the pair)."""
    if isinstance(value, dict):
        return {k: _fill(v, pair) for k, v in value.items()}
    if isinstance(value, str):
        return value.replace("{hmr}", HMR).replace("{lmr}", lmr_of(pair) if pair else HMR)
    return value


def mlm_settings(stage, pair=None):
    """MLMConfig as a dict for `stage` in pretrain | finetune | adapters | xlm."""
    lmr = lmr_of(pair) if pair else None
    s = merge(merge({"model": config["model"]}, config.get("mlm", {})), config.get(stage, {}))
    s["run"] = merge({"seed": config.get("seed", 0), "threads": train_threads()}, s.get("run", {}))
    if stage == "pretrain":
        s.update(langs=[HMR], mlm_steps=[HMR], eval_langs=[HMR])
    elif stage == "adapters":
        s.update(langs=[HMR, lmr], mlm_steps=[lmr], eval_langs=[lmr, HMR], trainable="adapters")
    else:
        s.update(langs=[HMR, lmr], mlm_steps=[lmr, HMR], eval_langs=[lmr, HMR])
    s = _fill(s, pair)
    from_dict(MLMConfig, s, f"{stage}.")  # fail early, naming the key
    return s


def unmt_settings(system, pair):
    lmr = lmr_of(pair)
    model = merge(config["model"], config.get("adapters", {}).get("model", {})) if system == "relm_adapters" else config["model"]
    s = merge(merge({"model": model}, config.get("unmt", {})), config.get("unmt_systems", {}).get(system, {}))
    s["run"] = merge({"seed": config.get("seed", 0), "threads": train_threads()}, s.get("run", {}))
    s.update(langs=[HMR, lmr], ae_steps=[HMR, lmr], bt_steps=[f"{HMR}-{lmr}-{HMR}", f"{lmr}-{HMR}-{lmr}"])
    s = _fill(s, pair)
    from_dict(UNMTConfig, s, f"unmt_systems.{system}." if system in config.get("unmt_systems", {}) else "unmt.")
    return s


def settings_json(settings):
    return json.dumps(settings, sort_keys=True)


def train_threads():
    """CPU threads of a training job (rule threads = torch threads). On a small CPU, two single-threaded jobs side
    by side beat one two-threaded job by far: small matrices do not parallelize and threads fight for cores."""
    return int(config.get("train_threads", 1))


def gpus(kind):
    return int(config.get("gpus", {}).get(kind, 0))


def relm_launcher(kind="train"):
    """`relm`, or torchrun over k local GPUs for a multi-GPU training job."""
    k = gpus(kind)
    return f"torchrun --standalone --nproc-per-node={k} -m relm.cli" if k > 1 else "relm"


def corpus_args(flag, mapping):
    return " ".join(f"{flag} {lang}={path}" for lang, path in mapping.items())


# --- targets ----------------------------------------------------------------------------------


def score_files(pair, systems=None):
    return [
        f"results/{pair}/{system}/test.{d}.json" for system in (systems or SYSTEMS) for d in directions(pair)
    ]


def all_targets():
    return [
        "results/scores.tsv",
        "results/bleu.md",
        "results/bleu.tex",
        "results/bleu.png",
        "results/compute.md",
        *[f"results/{pair}/scores.tsv" for pair in PAIRS],
        *[f"results/{pair}/curves.png" for pair in PAIRS],
    ]


# --- input functions of rules/data.smk --------------------------------------------------------


def source_of(wildcards):
    return config["data"][wildcards.group][f"{wildcards.split}.{wildcards.lang}"]


def fetch_inputs(wildcards):
    src = source_of(wildcards)
    if "synthetic" in src:
        return {"src": f"data/synth/{src['synthetic']}"}
    if "path" in src:
        return {"src": src["path"]}
    return {}


def fetch_source(wildcards, input):
    """The JSON source for `relm fetch`: a file of the synthetic pair stands for a local path."""
    src = dict(source_of(wildcards))
    src.pop("lines", None)
    if "synthetic" in src:
        gen = config["synthetic"][src.pop("synthetic")]
        lang = wildcards.lang
        if lang not in (gen["hmr"], gen["lmr"]):
            raise ValueError(f"config key 'data.{wildcards.group}.{wildcards.split}.{lang}': the synthetic pair "
                             f"has languages {gen['hmr']} and {gen['lmr']}")
        src = {"path": f"{input.src}/{wildcards.split}.{lang}"}
    return json.dumps(src, sort_keys=True)


# --- input functions of rules/text.smk --------------------------------------------------------


def tok_input(wildcards):
    """The HMR train corpus is shared by every pair: data/{pair}/... reads it from data/{hmr}/."""
    group, split, lang = wildcards.group, wildcards.split, wildcards.lang
    if "-" in group and lang == HMR and split == "train":
        group = HMR
    return f"data/{group}/tok/{split}.{lang}"


def codes_of(wildcards):
    if wildcards.codes == "hmr":
        return f"data/{HMR}/codes.{HMR}"
    if "-" not in wildcards.group:
        raise ValueError(f"joint BPE codes exist per pair, not for {wildcards.group}")
    return f"data/{wildcards.group}/codes.{wildcards.group}"


def binarize_text(wildcards):
    group, dic, split, lang = wildcards.group, wildcards.dic, wildcards.split, wildcards.lang
    if dic == "hmr":
        if group != HMR or lang != HMR:
            raise ValueError(f"bin-hmr holds the HMR corpus only (data/{HMR}/bin-hmr/)")
        return f"data/{HMR}/bpe-hmr/{split}.{HMR}"
    # XLM: everything with the joint codes. RE-LM: LMR with the joint codes, HMR with the HMR codes.
    codes = "joint" if dic == "xlm" or lang == lmr_of(group) else "hmr"
    return f"data/{group}/bpe-{codes}/{split}.{lang}"


def binarize_vocab(wildcards):
    """HMR vocabulary, XLM's joint vocabulary, or RE-LM's extended one (known once the extension ran)."""
    if wildcards.dic == "hmr":
        return f"data/{HMR}/vocab.{HMR}"
    if wildcards.dic == "xlm":
        return f"data/{wildcards.group}/vocab.joint"
    return ext_vocab(wildcards)


# --- input functions of rules/mlm.smk ---------------------------------------------------------


def runtime(key):
    """SLURM minutes for a training rule; grows with each retry (attempt)."""
    base = int(config.get("runtime", {}).get(key, 240))
    return lambda wildcards, attempt: base * attempt


def finetune_corpora(wildcards, split):
    pair, lmr = wildcards.pair, lmr_of(wildcards.pair)
    langs = [lmr] if (wildcards.system == "relm_adapters" and split == "train") else [lmr, HMR]
    return {lang: binarized("relm", pair, split, lang) for lang in langs}


def xlm_corpora(wildcards, split):
    return {lang: binarized("xlm", wildcards.pair, split, lang) for lang in (lmr_of(wildcards.pair), HMR)}


# --- input functions of rules/unmt.smk --------------------------------------------------------


def unmt_corpora(wildcards, split):
    dic = dic_of(wildcards.system)
    return {lang: binarized(dic, wildcards.pair, split, lang) for lang in (HMR, lmr_of(wildcards.pair))}


# --- input functions of rules/evaluate.smk ----------------------------------------------------


def check_direction(wildcards):
    if sorted([wildcards.src, wildcards.tgt]) != sorted(wildcards.pair.split("-")):
        raise ValueError(f"direction {wildcards.src}-{wildcards.tgt} does not belong to pair {wildcards.pair}")


def source_codes(wildcards):
    """BPE codes of the source side: RE-LM segments the HMR with its own codes, everything else jointly."""
    check_direction(wildcards)
    if wildcards.system != "xlm" and wildcards.src == HMR:
        return f"data/{HMR}/codes.{HMR}"
    return f"data/{wildcards.pair}/codes.{wildcards.pair}"


# --- input functions of rules/report.smk ------------------------------------------------------


def pair_metrics(pair):
    runs = {"pretrain": f"models/{HMR}/mlm/metrics.jsonl"}
    for system in SYSTEMS:
        for stage in ("mlm", "unmt"):
            runs[f"{system}/{stage}"] = f"models/{pair}/{system}/{stage}/metrics.jsonl"
    return runs


def benchmark_files():
    """Label -> benchmark TSV for the stages worth a row in results/compute.md."""
    files = {
        f"tokenize {HMR} train": f"benchmarks/tokenize/{HMR}.train.{HMR}.tsv",
        f"bpe learn {HMR}": f"benchmarks/bpe_learn_hmr/{HMR}.tsv",
        f"pretrain {HMR}": f"benchmarks/pretrain/{HMR}.tsv",
    }
    for pair in PAIRS:
        lmr = lmr_of(pair)
        files[f"tokenize {pair} train.{lmr}"] = f"benchmarks/tokenize/{pair}.train.{lmr}.tsv"
        files[f"bpe learn {pair} joint"] = f"benchmarks/bpe_learn_joint/{pair}.tsv"
        for system in SYSTEMS:
            mlm = f"benchmarks/xlm_mlm/{pair}.tsv" if system == "xlm" else f"benchmarks/finetune/{pair}.{system}.tsv"
            files[f"mlm {pair} {system}"] = mlm
            files[f"unmt {pair} {system}"] = f"benchmarks/unmt/{pair}.{system}.tsv"
            for d in directions(pair):
                files[f"translate {pair} {system} {d}"] = f"benchmarks/translate/{pair}.{system}.test.{d}.tsv"
    return files


check_config()
