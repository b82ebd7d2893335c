# Masked-LM training: HMR pretraining (once per HMR) or the import of a released HMR MLM (config `pretrained`),
# then each system's MLM stage (relm/systems.py says what it trains and where it starts). Checkpoints live in the
# run directory next to the declared outputs: a killed or timed-out job resumes.


rule pretrain:
    input:
        vocab="data/{lang}/vocab.{lang}",
        train=bin_path("{lang}", "hmr", "train", "{lang}"),
        valid=bin_path("{lang}", "hmr", "valid", "{lang}"),
        test=bin_path("{lang}", "hmr", "test", "{lang}"),
    output:
        model="models/{lang}/mlm/model.pt",
        metrics="models/{lang}/mlm/metrics.jsonl",
    params:
        relm=relm_launcher,
        run_dir="models/{lang}/mlm",
        settings=lambda w: settings_json(mlm_settings(config)),
    threads: train_threads(config)
    priority: PRIORITY["pretrain"]
    resources:
        runtime=runtime("pretrain"),
        gpu=gpus("train"),
        mem_mb=mem_mb("train"),
        slurm_extra=TRAIN_SIGNAL,
    conda:
        "../envs/relm.yaml"
    log:
        "logs/pretrain/{lang}.log",
    benchmark:
        "benchmarks/pretrain/{lang}.tsv"
    shell:
        "{params.relm} train mlm --run-dir {params.run_dir:q} --settings {params.settings:q} --vocab {input.vocab:q} "
        "--train {wildcards.lang:q}={input.train:q} --valid {wildcards.lang:q}={input.valid:q} "
        "--test {wildcards.lang:q}={input.test:q} --out {output.model:q} --metrics {output.metrics:q} > {log:q} 2>&1"


rule mlm:
    input:
        unpack(mlm_start),
        vocab=system_vocab,
        train=lambda w: mlm_corpora(w)["train"].values(),
        valid=lambda w: mlm_corpora(w)["valid"].values(),
        test=lambda w: mlm_corpora(w)["test"].values(),
    output:
        model="models/{pair}/{system}/seed{seed}/mlm/model.pt",
        metrics="models/{pair}/{system}/seed{seed}/mlm/metrics.jsonl",
    params:
        relm=relm_launcher,
        run_dir="models/{pair}/{system}/seed{seed}/mlm",
        settings=lambda w: settings_json(mlm_settings(config, w.system, w.pair, int(w.seed))),
        corpora=lambda w: corpora_args(mlm_corpora(w)),
        start=mlm_start_args,
    threads: train_threads(config)
    priority: PRIORITY["mlm"]
    resources:
        runtime=runtime("mlm"),
        gpu=gpus("train"),
        mem_mb=mem_mb("train"),
        slurm_extra=TRAIN_SIGNAL,
    conda:
        "../envs/relm.yaml"
    log:
        "logs/mlm/{pair}.{system}.seed{seed}.log",
    benchmark:
        "benchmarks/mlm/{pair}.{system}.seed{seed}.tsv"
    shell:
        "{params.relm} train mlm --run-dir {params.run_dir:q} --settings {params.settings:q} --vocab {input.vocab:q} "
        "{params.corpora} {params.start} --out {output.model:q} --metrics {output.metrics:q} > {log:q} 2>&1"


# The new rows of the RE-LM extension when they do not start at random (config `extension.init`): once per pair,
# from the HMR MLM (relm/model/newrows.py); the log of `aligned` reports the precision of its cross-lingual map.
rule extension_init:
    input:
        unpack(extension_init_inputs),
        vocab=ext_vocab,
    output:
        rows="models/{pair}/extension/{init}.npy",
        info="models/{pair}/extension/{init}.json",
    wildcard_constraints:
        init="mean|subword|aligned",
    params:
        settings=lambda w: settings_json(extension_settings(config)),
        files=extension_init_args,
        seed=config.get("seed", 0),
    priority: PRIORITY["mlm"]
    resources:
        mem_mb=mem_mb("train"),
    conda:
        "../envs/relm.yaml"
    log:
        "logs/extension_init/{pair}.{init}.log",
    benchmark:
        "benchmarks/extension_init/{pair}.{init}.tsv"
    shell:
        "relm vocab init-rows --method {wildcards.init:q} --checkpoint {input.model:q} --extension {input.sidecar:q} "
        "--vocab {input.vocab:q} {params.files} --settings {params.settings:q} --seed {params.seed} "
        "--out {output.rows:q} > {log:q} 2>&1"


# --- starting from a released MLM (config `pretrained`) -----------------------------------------------------------
# The released checkpoint replaces HMR pretraining; its fastBPE codes (converted) and vocabulary become the HMR codes
# and vocabulary (rules bpe_learn_hmr and vocab_hmr are not defined then). import_released checks the three files
# against each other and against the config; every MLM stage waits for it (released_gate), so a mismatch stops the
# workflow before any training job. The fetches and the check run first (priority).

if RELEASED:

    localrules:
        released_checkpoint,
        released_codes_fetch,
        released_vocab,

    rule released_checkpoint:
        input:
            released_local("checkpoint"),
        output:
            f"data/{HMR}/released/checkpoint.pth",
        params:
            source=released_source("checkpoint"),
        priority: 50
        conda:
            "../envs/relm.yaml"
        log:
            f"logs/released/{HMR}.checkpoint.log",
        shell:
            "relm fetch-checkpoint --source {params.source:q} --out {output:q} > {log:q} 2>&1"

    rule released_codes_fetch:
        input:
            released_local("codes"),
        output:
            f"data/{HMR}/released/codes.fastbpe",
        params:
            source=released_source("codes"),
        priority: 50
        conda:
            "../envs/relm.yaml"
        log:
            f"logs/released/{HMR}.codes.log",
        shell:
            "relm fetch --source {params.source:q} --out {output:q} > {log:q} 2>&1"

    rule released_codes:
        input:
            f"data/{HMR}/released/codes.fastbpe",
        output:
            f"data/{HMR}/codes.{HMR}",
        priority: 50
        conda:
            "../envs/relm.yaml"
        log:
            f"logs/released/{HMR}.convert-codes.log",
        shell:
            "relm bpe convert-codes --input {input:q} --output {output:q} > {log:q} 2>&1"

    rule released_vocab:
        input:
            released_local("vocab"),
        output:
            f"data/{HMR}/vocab.{HMR}",
        params:
            source=released_source("vocab"),
        priority: 50
        conda:
            "../envs/relm.yaml"
        log:
            f"logs/released/{HMR}.vocab.log",
        shell:
            "relm fetch --source {params.source:q} --out {output:q} > {log:q} 2>&1"

    rule import_released:
        input:
            checkpoint=f"data/{HMR}/released/checkpoint.pth",
            vocab=f"data/{HMR}/vocab.{HMR}",
        output:
            model=hmr_mlm(),
            summary=released_summary(),
        params:
            expect=released_expect_model(),
            origin=released_origin(),
        priority: 50
        resources:
            mem_mb=lambda w, input: 2000 + 3 * int(input.size_mb),
        conda:
            "../envs/relm.yaml"
        log:
            f"logs/import_released/{HMR}.log",
        benchmark:
            f"benchmarks/import_released/{HMR}.tsv"
        shell:
            "relm import-xlm {input.checkpoint:q} {output.model:q} --kind mlm --vocab {input.vocab:q} "
            "--expect-model {params.expect:q} --summary {output.summary:q} --origin {params.origin:q} > {log:q} 2>&1"
