# Config check, wildcards, paths and input functions shared by the rule files. What a system or a stage *is* lives
# in the package (relm/systems.py); this file only maps it to files.

import json
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from relm.config import TranslateConfig, from_dict
from relm.errors import ConfigError
from relm.systems import DICTIONARIES, SYSTEMS, codes_for, directions, has_mlm_stage, mlm_langs, split_pair
from relm.systems import extension_settings, mlm_settings, seeds, stages, train_threads, unmt_langs, unmt_settings
from relm.workflow import check_config, hmr_mlm_systems, released_model_keys

min_version("9.0")

try:
    check_config(config, f"{workflow.basedir}/config/schema.yaml")
except ConfigError as e:
    raise WorkflowError(str(e)) from None

HMR = config["hmr"]
PAIRS = list(config["pairs"])
SEEDS = seeds(config)
EXT_INIT = extension_settings(config)["init"]  # the new rows of the RE-LM extension: random | mean | subword | aligned


wildcard_constraints:
    lang="[a-z]{2,3}",
    src="[a-z]{2,3}",
    tgt="[a-z]{2,3}",
    pair="[a-z]{2,3}-[a-z]{2,3}",
    group="[a-z]{2,3}(-[a-z]{2,3})?",
    split="train|valid|test",
    codes="hmr|joint",
    dic="|".join(DICTIONARIES),
    system="|".join(SYSTEMS),
    seed="[0-9]+",
    name="[A-Za-z0-9_]+",


def lmr_of(pair):
    return split_pair(pair)[0]


# --- paths ------------------------------------------------------------------------------------


def bin_path(group, dic, split, lang):
    return f"data/{group}/bin-{dic}/{split}.{lang}.json"


def binarized(dic, pair, split, lang):
    """Corpus of `lang` for a dictionary; the HMR train corpus is shared where the dictionary allows it."""
    if lang == HMR and split == "train" and DICTIONARIES[dic].reuses_hmr_train:
        return bin_path(HMR, "hmr", "train", HMR)
    return bin_path(pair, dic, split, lang)


def ext_sidecar(pair):
    return f"data/{pair}/vocab.{pair}-ext.json"


def vocab_file(dic, pair, wildcards):
    """The vocabulary file of a dictionary; RE-LM's extended one is known once the extension ran (a checkpoint):
    vocab.{lmr}-{hmr}-ext-by-{N}, N read from the sidecar."""
    kind = DICTIONARIES[dic].vocab
    if kind == "hmr":
        return f"data/{HMR}/vocab.{HMR}"
    if kind == "joint":
        return f"data/{pair}/vocab.joint"
    sidecar = checkpoints.extend_vocab.get(pair=pair).output.sidecar
    return json.loads(Path(sidecar).read_text())["ext_vocab"]


def ext_vocab(wildcards):
    return vocab_file("relm", wildcards.pair, wildcards)


def system_vocab(wildcards):
    return vocab_file(SYSTEMS[wildcards.system].dictionary, wildcards.pair, wildcards)


def codes_path(codes, pair):
    return f"data/{HMR}/codes.{HMR}" if codes == "hmr" else f"data/{pair}/codes.{pair}"


# --- starting from a released MLM (config `pretrained`; rules in rules/mlm.smk) ---------------
# The released checkpoint, imported and checked, is the HMR MLM; its codes and vocabulary are the HMR codes and
# vocabulary (data/{hmr}/codes.{hmr}, data/{hmr}/vocab.{hmr}), so the HMR corpora are segmented and binarized with
# them as with those of pretraining.

RELEASED = bool(config.get("pretrained"))


def hmr_mlm():
    """The HMR MLM that the systems with init "pretrain" start from: rule pretrain's, or the released one."""
    return f"models/{HMR}/released/model.pt" if RELEASED else f"models/{HMR}/mlm/model.pt"


def released_summary():
    """Written by rule import_released once the released files passed their checks."""
    return f"models/{HMR}/released/import.json"


def released_gate():
    """Every MLM stage waits for the check of a released MLM, so that a mismatch stops the workflow before any
    training job; ancient(): a new import does not make the stages that do not read it (XLM) out of date."""
    return {"released_checked": ancient(released_summary())} if RELEASED else {}


def released_source(kind):
    """JSON of `pretrained.<kind>` for relm fetch / relm fetch-checkpoint."""
    return json.dumps(config["pretrained"][kind], sort_keys=True)


def released_local(kind):
    """A local file of the `pretrained` block, as an input (a changed file is then acquired again)."""
    src = config["pretrained"][kind]
    return [src["path"]] if "path" in src else []


def released_origin():
    """Where the files that import_released checks came from, for its error message."""
    src = {k: v.get("path", v.get("url")) for k, v in config["pretrained"].items()}
    return f"config 'pretrained': checkpoint {src['checkpoint']}, vocab {src['vocab']}"


def released_expect_model():
    """JSON {config key: value} of the architecture the MLM stages starting from the HMR MLM ask for."""
    return json.dumps(released_model_keys(config), sort_keys=True)


# --- settings and launchers -------------------------------------------------------------------


def settings_json(settings):
    return json.dumps(settings, sort_keys=True)


def gpus(kind):
    return int(config.get("gpus", {}).get(kind, 0))


def relm_launcher(wildcards, resources):
    """The command that starts `relm` in a training job. Under the launcher a site profile names in the job's `mpi`
    resource (e.g. srun: one rank per SLURM task, over several nodes), torchrun over `gpus.train` local GPUs, or plain."""
    if resources.get("mpi"):
        # The plugin's job step clears SLURM_* task settings from the rule's environment: say the geometry again.
        tasks = f" --nodes={resources.get('nodes', 1)} --ntasks-per-node={resources.get('tasks_per_node', 1)}"
        return f"{resources.mpi}{tasks if Path(resources.mpi).name == 'srun' else ''} relm"
    k = gpus("train")
    return f"torchrun --standalone --nproc-per-node={k} -m relm.cli" if k > 1 else "relm"


def text_threads(wildcards):
    """Processes of a tokenize / bpe_apply job: `threads` for a train corpus, one for a valid or test set (small),
    which then never waits for a second free core while a training job holds the other."""
    return int(config.get("threads", 1)) if wildcards.split == "train" else 1


def runtime(key):
    """SLURM minutes for a training rule; grows with each retry (attempt)."""
    base = int(config.get("runtime", {}).get(key, 240))
    return lambda wildcards, attempt: base * attempt


def mem_mb(kind):
    """Host memory (MB) of a GPU rule's job: config `mem_mb.<kind>`."""
    return int(config.get("mem_mb", {}).get(kind, MEM_MB))


MEM_MB = 16000
# Among the jobs ready to run, the longest chain first: data preparation (short jobs that every training job waits
# for), HMR pretraining (every RE-LM system waits for it), the systems' MLM stages (each unblocks a UNMT), then UNMT.
# Without this, on 2 cores, UNMT jobs took the cores while the adapter fine-tuning waited, and XLM's MLM stages of
# several seeds held both cores while the HMR corpus waited for its binarization.
PRIORITY = {"prepare": 3, "pretrain": 2, "mlm": 1}
# SLURM sends SIGTERM 300 s before a training job's time limit: the trainer writes its resume checkpoint and
# exits 75 (relm/train/resume.py). Not USR1: it would kill the Snakemake process around the rule first.
TRAIN_SIGNAL = "--signal=TERM@300"


def translate_args():
    return from_dict(TranslateConfig, config.get("translate"), "translate.").cli_args()


def corpus_args(flag, mapping):
    return " ".join(f"{flag} {lang}={path}" for lang, path in mapping.items())


# --- targets ----------------------------------------------------------------------------------


def score_files(pair):
    return [f"results/{pair}/{system}/seed{seed}/test.{d}.json"
            for system in config["systems"] for seed in SEEDS for d in directions(pair)]


def seed_label(seed):
    """How a seed appears in curve and compute labels (no spaces: they are command-line words): not at all when the
    study has one seed."""
    return f"_seed{seed}" if len(SEEDS) > 1 else ""


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


LOCK = config.get("lock", "data.lock")


def source_of(wildcards):
    return config["data"][wildcards.group][f"{wildcards.get('split', 'train')}.{wildcards.lang}"]


def eval_sides(wildcards):
    """The valid/test files whose lines are removed from a train corpus: its own group's (a pair's LMR sides, or the
    HMR valid/test sets). Not other pairs' HMR sides: pairs stay independent (one pair, one target)."""
    return [f"data/{wildcards.group}/raw/{split}.{wildcards.lang}" for split in ("valid", "test")
            if f"{split}.{wildcards.lang}" in config["data"][wildcards.group]]


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
        src = {"path": f"{input.src}/{wildcards.get('split', 'train')}.{wildcards.lang}"}
    return json.dumps(src, sort_keys=True)


# --- input functions of rules/text.smk --------------------------------------------------------


def tokenize_inputs(wildcards):
    """Raw text; a valid/test side is tokenized once its line count was checked against the other side's."""
    text = f"data/{wildcards.group}/raw/{wildcards.split}.{wildcards.lang}"
    if "-" in wildcards.group and wildcards.split != "train":
        return {"text": text, "aligned": f"data/{wildcards.group}/raw/{wildcards.split}.parallel.json"}
    return {"text": text}


def long_line_args(wildcards):
    """Overlong lines are skipped in monolingual train corpora; in a valid/test set, dropping one would misalign
    the pairs, so there they are an error."""
    t = config.get("tokenize", {})
    policy = t.get("on_long_line", "skip") if wildcards.split == "train" else "error"
    return f"--max-line-chars {t.get('max_line_chars', 10000)} --on-long-line {policy}"


def tok_input(wildcards):
    """The HMR train corpus is shared by every pair: data/{pair}/... reads it from data/{hmr}/."""
    group, split, lang = wildcards.group, wildcards.split, wildcards.lang
    if "-" in group and lang == HMR and split == "train":
        group = HMR
    return f"data/{group}/tok/{split}.{lang}"


def bpe_apply_inputs(wildcards):
    """Tokenized text and codes; the HMR valid/test sets of pretraining also the HMR vocabulary when
    bpe.restrict_hmr_eval (the original applies fastBPE with vocab.en there)."""
    if wildcards.codes == "joint" and "-" not in wildcards.group:
        raise ValueError(f"joint BPE codes exist per pair, not for {wildcards.group}")
    out = {"text": tok_input(wildcards), "codes": codes_path(wildcards.codes, wildcards.group)}
    if wildcards.group == HMR and wildcards.split != "train" and config["bpe"].get("restrict_hmr_eval", True):
        out["vocab"] = f"data/{HMR}/vocab.{HMR}"
    return out


def binarize_text(wildcards):
    group, dic, split, lang = wildcards.group, wildcards.dic, wildcards.split, wildcards.lang
    if dic == "hmr" and (group != HMR or lang != HMR):
        raise ValueError(f"bin-hmr holds the HMR corpus only (data/{HMR}/bin-hmr/)")
    return f"data/{group}/bpe-{codes_for(dic, lang, HMR)}/{split}.{lang}"


def binarize_vocab(wildcards):
    return vocab_file(wildcards.dic, wildcards.group, wildcards)


# --- input functions of rules/mlm.smk and rules/unmt.smk --------------------------------------


def run_corpora(dic, pair, langs):
    """{split: {lang: corpus}}: training corpora of `langs["train"]`, evaluation corpora of `langs["eval"]`."""
    return {split: {lang: binarized(dic, pair, split, lang) for lang in langs["train" if split == "train" else "eval"]}
            for split in ("train", "valid", "test")}


def mlm_corpora(wildcards):
    langs = mlm_langs(wildcards.system, wildcards.pair, HMR)
    return run_corpora(SYSTEMS[wildcards.system].dictionary, wildcards.pair,
                       {"train": langs["mlm_steps"], "eval": langs["eval_langs"]})


def mlm_start(wildcards):
    """The checkpoint a system's MLM stage starts from, and the vocabulary extension to apply to it; the other
    systems wait for the check of a released MLM (released_gate)."""
    if SYSTEMS[wildcards.system].init == "pretrain":
        start = {"init": hmr_mlm(), "extension": ext_sidecar(wildcards.pair)}
        if EXT_INIT != "random":  # else drawn by the MLM stage itself, as the original
            start["ext_rows"] = ext_rows(wildcards.pair)
        return start
    return released_gate()


def mlm_start_args(wildcards, input):
    if "init" not in input.keys():
        return ""
    rows = f" --ext-rows {input.ext_rows}" if "ext_rows" in input.keys() else ""
    return f"--init {input.init} --extension {input.extension}{rows}"


def ext_rows(pair):
    return f"models/{pair}/extension/{EXT_INIT}.npy"


def extension_init_inputs(wildcards):
    """What `relm vocab init-rows` reads: the HMR MLM and the extension; subword the HMR codes; aligned the two
    training texts as the RE-LM systems segment them (HMR with the HMR codes, LMR with the joint codes). The
    extended vocabulary is a separate input (ext_vocab): it is known once the extension ran."""
    pair = wildcards.pair
    inputs = {"model": hmr_mlm(), "sidecar": ext_sidecar(pair)}
    if wildcards.init == "subword":
        inputs["codes"] = codes_path("hmr", pair)
    if wildcards.init == "aligned":
        inputs["hmr_text"] = f"data/{HMR}/bpe-hmr/train.{HMR}"
        inputs["lmr_text"] = f"data/{pair}/bpe-joint/train.{lmr_of(pair)}"
    return inputs


def extension_init_args(wildcards, input):
    names = {"codes": "--codes", "hmr_text": "--hmr-text", "lmr_text": "--lmr-text"}
    return " ".join(f"{flag} {input[key]}" for key, flag in names.items() if key in input.keys())


def unmt_start(wildcards):
    """The MLM a system's UNMT starts from; none for a system without MLM stage (random weights), which waits for
    the check of a released MLM as the MLM stages do."""
    if has_mlm_stage(wildcards.system):
        return {"init": f"models/{wildcards.pair}/{wildcards.system}/seed{wildcards.seed}/mlm/model.pt"}
    return released_gate()


def unmt_start_args(wildcards, input):
    return f"--init {input.init}" if "init" in input.keys() else ""


def unmt_corpora(wildcards):
    langs = unmt_langs(wildcards.pair)["langs"]
    return run_corpora(SYSTEMS[wildcards.system].dictionary, wildcards.pair, {"train": langs, "eval": langs})


def corpora_args(corpora):
    return " ".join(corpus_args(f"--{split}", corpora[split]) for split in ("train", "valid", "test"))


# --- input functions of rules/evaluate.smk ----------------------------------------------------


def source_codes(wildcards):
    """BPE codes of the source side of a translation direction, as the system segments it."""
    if sorted([wildcards.src, wildcards.tgt]) != sorted(split_pair(wildcards.pair)):
        raise ValueError(f"direction {wildcards.src}-{wildcards.tgt} does not belong to pair {wildcards.pair}")
    return codes_path(codes_for(SYSTEMS[wildcards.system].dictionary, wildcards.src, HMR), wildcards.pair)


# --- input functions of rules/report.smk ------------------------------------------------------


def pair_metrics(pair):
    # a released MLM has no curve; without a system that starts from the HMR MLM there is no pretraining
    runs = {} if RELEASED or not hmr_mlm_systems(config) else {"pretrain": f"models/{HMR}/mlm/metrics.jsonl"}
    for system in config["systems"]:
        for seed in SEEDS:
            for stage in stages(system):
                runs[f"{system}/{stage}{seed_label(seed)}"] = f"models/{pair}/{system}/seed{seed}/{stage}/metrics.jsonl"
    return runs


def local_cores():
    """The cores of a local run (--cores), for the busy/idle core-minutes of results/compute.md; 0 (not reported)
    when jobs go to a cluster (also inside a cluster job), where the cores are the scheduler's."""
    plugin = workflow.executor_plugin
    if plugin is not None and getattr(plugin, "name", "local") not in ("local", "dryrun"):
        return 0
    cores = workflow.global_resources.get("_cores")
    return int(getattr(cores, "value", cores) or 0)


def benchmark_files():
    """Label -> benchmark TSV for the stages worth a row in results/compute.md."""
    files = {f"tokenize {HMR} train": f"benchmarks/tokenize/{HMR}.train.{HMR}.tsv"}
    if RELEASED:
        files[f"import {HMR} released MLM"] = f"benchmarks/import_released/{HMR}.tsv"
    elif hmr_mlm_systems(config):  # else no system starts from the HMR MLM: no pretraining
        files[f"bpe learn {HMR}"] = f"benchmarks/bpe_learn_hmr/{HMR}.tsv"
        files[f"pretrain {HMR}"] = f"benchmarks/pretrain/{HMR}.tsv"
    for pair in PAIRS:
        lmr = lmr_of(pair)
        files[f"tokenize {pair} train.{lmr}"] = f"benchmarks/tokenize/{pair}.train.{lmr}.tsv"
        files[f"bpe learn {pair} joint"] = f"benchmarks/bpe_learn_joint/{pair}.tsv"
        for system in config["systems"]:
            for seed in SEEDS:
                for stage in stages(system):
                    files[f"{stage} {pair} {system}{seed_label(seed)}"] = f"benchmarks/{stage}/{pair}.{system}.seed{seed}.tsv"
                for d in directions(pair):
                    files[f"translate {pair} {system} {d}{seed_label(seed)}"] = \
                        f"benchmarks/translate/{pair}.{system}.seed{seed}.test.{d}.tsv"
    return files
