# Masked-LM training: HMR pretraining (once per HMR), then each system's MLM stage (relm/systems.py says what it
# trains and where it starts). Checkpoints live in the run directory next to the declared outputs: a killed or
# timed-out job resumes.


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
        relm=relm_launcher(),
        run_dir="models/{lang}/mlm",
        settings=lambda w: settings_json(mlm_settings(config)),
    threads: train_threads(config)
    resources:
        runtime=runtime("pretrain"),
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
        model="models/{pair}/{system}/mlm/model.pt",
        metrics="models/{pair}/{system}/mlm/metrics.jsonl",
    params:
        relm=relm_launcher(),
        run_dir="models/{pair}/{system}/mlm",
        settings=lambda w: settings_json(mlm_settings(config, w.system, w.pair)),
        corpora=lambda w: corpora_args(mlm_corpora(w)),
        start=lambda w, input: f"--init {input.init} --extension {input.extension}" if "init" in input.keys() else "",
    threads: train_threads(config)
    resources:
        runtime=runtime("mlm"),
    conda:
        "../envs/relm.yaml"
    log:
        "logs/mlm/{pair}.{system}.log",
    benchmark:
        "benchmarks/mlm/{pair}.{system}.tsv"
    shell:
        "{params.relm} train mlm --run-dir {params.run_dir:q} --settings {params.settings:q} --vocab {input.vocab:q} "
        "{params.corpora} {params.start} --out {output.model:q} --metrics {output.metrics:q} > {log:q} 2>&1"
