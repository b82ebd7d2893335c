# Translation of the test sets with each system's UNMT model, and scoring with sacreBLEU (detokenized) plus
# the original's tokenized BLEU.


rule translate:
    input:
        model="models/{pair}/{system}/unmt/model.pt",
        codes=source_codes,
        text="data/{pair}/raw/{split}.{src}",
    output:
        hyp="results/{pair}/{system}/{split}.{src}-{tgt}.hyp",
        tok="results/{pair}/{system}/{split}.{src}-{tgt}.hyp.tok",
    params:
        beam=config.get("translate", {}).get("beam_size", 1),
        lp=config.get("translate", {}).get("length_penalty", 1.0),
    conda:
        "../envs/relm.yaml"
    log:
        "logs/translate/{pair}.{system}.{split}.{src}-{tgt}.log",
    benchmark:
        "benchmarks/translate/{pair}.{system}.{split}.{src}-{tgt}.tsv"
    shell:
        "relm translate --model {input.model} --src-lang {wildcards.src} --tgt-lang {wildcards.tgt} "
        "--codes {input.codes} --input {input.text} --output {output.hyp} --tok-output {output.tok} "
        "--beam-size {params.beam} --length-penalty {params.lp} > {log} 2>&1"


rule score:
    input:
        hyp="results/{pair}/{system}/{split}.{src}-{tgt}.hyp",
        ref="data/{pair}/raw/{split}.{tgt}",
        src="data/{pair}/raw/{split}.{src}",
    output:
        "results/{pair}/{system}/{split}.{src}-{tgt}.json",
    conda:
        "../envs/relm.yaml"
    log:
        "logs/score/{pair}.{system}.{split}.{src}-{tgt}.log",
    shell:
        "relm score --hyp {input.hyp} --ref {input.ref} --src {input.src} --tgt-lang {wildcards.tgt} "
        "--pair {wildcards.pair} --system {wildcards.system} --direction {wildcards.src}-{wildcards.tgt} "
        "--split {wildcards.split} --output {output} > {log} 2>&1"
