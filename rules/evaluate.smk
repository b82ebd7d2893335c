# Translation of the test sets with each system's UNMT model, and scoring with sacreBLEU (detokenized) plus
# the original's tokenized BLEU.


rule translate:
    input:
        model="models/{pair}/{system}/seed{seed}/unmt/model.pt",
        codes=source_codes,
        text="data/{pair}/raw/{split}.{src}",
    output:
        hyp="results/{pair}/{system}/seed{seed}/{split}.{src}-{tgt}.hyp",
        tok="results/{pair}/{system}/seed{seed}/{split}.{src}-{tgt}.hyp.tok",
    params:
        settings=translate_args(),
    resources:
        gpu=gpus("translate"),
        mem_mb=mem_mb("translate"),
    conda:
        "../envs/relm.yaml"
    log:
        "logs/translate/{pair}.{system}.seed{seed}.{split}.{src}-{tgt}.log",
    benchmark:
        "benchmarks/translate/{pair}.{system}.seed{seed}.{split}.{src}-{tgt}.tsv"
    shell:
        "relm translate --model {input.model:q} --src-lang {wildcards.src:q} --tgt-lang {wildcards.tgt:q} "
        "--codes {input.codes:q} --input {input.text:q} --output {output.hyp:q} --tok-output {output.tok:q} "
        "{params.settings} > {log:q} 2>&1"


rule score:
    input:
        hyp="results/{pair}/{system}/seed{seed}/{split}.{src}-{tgt}.hyp",
        ref="data/{pair}/raw/{split}.{tgt}",
        src="data/{pair}/raw/{split}.{src}",
    output:
        "results/{pair}/{system}/seed{seed}/{split}.{src}-{tgt}.json",
    conda:
        "../envs/relm.yaml"
    log:
        "logs/score/{pair}.{system}.seed{seed}.{split}.{src}-{tgt}.log",
    shell:
        "relm score --hyp {input.hyp:q} --ref {input.ref:q} --src {input.src:q} --tgt-lang {wildcards.tgt:q} "
        "--pair {wildcards.pair:q} --system {wildcards.system:q} --seed {wildcards.seed} --direction {wildcards.src:q}-{wildcards.tgt:q} "
        "--split {wildcards.split:q} --output {output:q} > {log:q} 2>&1"
