# Unsupervised NMT (denoising auto-encoding + online back-translation), one run per system and pair,
# encoder and decoder initialized from the system's MLM (random for a system without MLM stage).


rule unmt:
    input:
        unpack(unmt_start),
        vocab=system_vocab,
        train=lambda w: unmt_corpora(w)["train"].values(),
        valid=lambda w: unmt_corpora(w)["valid"].values(),
        test=lambda w: unmt_corpora(w)["test"].values(),
    output:
        model="models/{pair}/{system}/seed{seed}/unmt/model.pt",
        metrics="models/{pair}/{system}/seed{seed}/unmt/metrics.jsonl",
    params:
        relm=relm_launcher,
        run_dir="models/{pair}/{system}/seed{seed}/unmt",
        settings=lambda w: settings_json(unmt_settings(config, w.system, w.pair, int(w.seed))),
        corpora=lambda w: corpora_args(unmt_corpora(w)),
        start=unmt_start_args,
    threads: train_threads(config)
    resources:
        runtime=runtime("unmt"),
        gpu=gpus("train"),
        mem_mb=mem_mb("train"),
        slurm_extra=TRAIN_SIGNAL,
    conda:
        "../envs/relm.yaml"
    log:
        "logs/unmt/{pair}.{system}.seed{seed}.log",
    benchmark:
        "benchmarks/unmt/{pair}.{system}.seed{seed}.tsv"
    shell:
        "{params.relm} train unmt --run-dir {params.run_dir:q} --settings {params.settings:q} --vocab {input.vocab:q} "
        "{params.corpora} {params.start} --out {output.model:q} --metrics {output.metrics:q} > {log:q} 2>&1"
