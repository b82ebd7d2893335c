# Masked-LM training: HMR pretraining, RE-LM fine-tuning (with and without adapters), the XLM baseline.
# Checkpoints live in the run directory next to the declared outputs: a killed or timed-out job resumes.


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
        settings=lambda w: settings_json(mlm_settings("pretrain")),
    threads: train_threads()
    resources:
        runtime=runtime("pretrain"),
    conda:
        "../envs/relm.yaml"
    log:
        "logs/pretrain/{lang}.log",
    benchmark:
        "benchmarks/pretrain/{lang}.tsv"
    shell:
        "{params.relm} train mlm --run-dir {params.run_dir} --settings {params.settings:q} --vocab {input.vocab} "
        "--train {wildcards.lang}={input.train} --valid {wildcards.lang}={input.valid} "
        "--test {wildcards.lang}={input.test} --out {output.model} --metrics {output.metrics} > {log} 2>&1"


rule finetune:
    input:
        init=f"models/{HMR}/mlm/model.pt",
        extension=lambda w: ext_sidecar(w.pair),
        vocab=ext_vocab,
        train=lambda w: finetune_corpora(w, "train").values(),
        valid=lambda w: finetune_corpora(w, "valid").values(),
        test=lambda w: finetune_corpora(w, "test").values(),
    output:
        model="models/{pair}/{system}/mlm/model.pt",
        metrics="models/{pair}/{system}/mlm/metrics.jsonl",
    wildcard_constraints:
        system="relm|relm_adapters",
    params:
        relm=relm_launcher(),
        run_dir="models/{pair}/{system}/mlm",
        settings=lambda w: settings_json(mlm_settings("adapters" if w.system == "relm_adapters" else "finetune", w.pair)),
        corpora=lambda w: " ".join(
            corpus_args(f"--{split}", finetune_corpora(w, split)) for split in ("train", "valid", "test")
        ),
    threads: train_threads()
    resources:
        runtime=runtime("finetune"),
    conda:
        "../envs/relm.yaml"
    log:
        "logs/finetune/{pair}.{system}.log",
    benchmark:
        "benchmarks/finetune/{pair}.{system}.tsv"
    shell:
        "{params.relm} train mlm --run-dir {params.run_dir} --settings {params.settings:q} --vocab {input.vocab} "
        "{params.corpora} --init {input.init} --extension {input.extension} "
        "--out {output.model} --metrics {output.metrics} > {log} 2>&1"


rule xlm_mlm:
    input:
        vocab="data/{pair}/vocab.joint",
        train=lambda w: xlm_corpora(w, "train").values(),
        valid=lambda w: xlm_corpora(w, "valid").values(),
        test=lambda w: xlm_corpora(w, "test").values(),
    output:
        model="models/{pair}/xlm/mlm/model.pt",
        metrics="models/{pair}/xlm/mlm/metrics.jsonl",
    params:
        relm=relm_launcher(),
        run_dir="models/{pair}/xlm/mlm",
        settings=lambda w: settings_json(mlm_settings("xlm", w.pair)),
        corpora=lambda w: " ".join(corpus_args(f"--{s}", xlm_corpora(w, s)) for s in ("train", "valid", "test")),
    threads: train_threads()
    resources:
        runtime=runtime("xlm_mlm"),
    conda:
        "../envs/relm.yaml"
    log:
        "logs/xlm_mlm/{pair}.log",
    benchmark:
        "benchmarks/xlm_mlm/{pair}.tsv"
    shell:
        "{params.relm} train mlm --run-dir {params.run_dir} --settings {params.settings:q} --vocab {input.vocab} "
        "{params.corpora} --out {output.model} --metrics {output.metrics} > {log} 2>&1"
