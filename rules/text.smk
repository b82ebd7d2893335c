# Text to tensors: Moses tokenization, BPE (HMR-only and joint codes), vocabularies, RE-LM vocabulary
# extension (its N flows on through a checkpoint) and binarization.


rule tokenize:
    priority: PRIORITY["prepare"]
    input:
        unpack(tokenize_inputs),
    output:
        "data/{group}/tok/{split}.{lang}",
    params:
        long_lines=long_line_args,
    threads: text_threads
    conda:
        "../envs/relm.yaml"
    log:
        "logs/tokenize/{group}.{split}.{lang}.log",
    benchmark:
        "benchmarks/tokenize/{group}.{split}.{lang}.tsv"
    shell:
        "relm tokenize --input {input.text:q} --output {output:q} --lang {wildcards.lang:q} --threads {threads} "
        "{params.long_lines} > {log:q} 2>&1"


# With a released MLM (config `pretrained`) its codes and vocabulary are the HMR ones: rules released_codes and
# released_vocab in rules/mlm.smk write these files instead.
if not RELEASED:

    rule bpe_learn_hmr:
        priority: PRIORITY["prepare"]
        input:
            "data/{lang}/tok/train.{lang}",
        output:
            "data/{lang}/codes.{lang}",
        params:
            merges=config["bpe"]["hmr_merges"],
        threads: config.get("threads", 1)
        conda:
            "../envs/relm.yaml"
        log:
            "logs/bpe_learn_hmr/{lang}.log",
        benchmark:
            "benchmarks/bpe_learn_hmr/{lang}.tsv"
        shell:
            "relm bpe learn --inputs {input:q} --codes {output:q} --merges {params.merges:q} --threads {threads} "
            "> {log:q} 2>&1"


rule bpe_learn_joint:
    priority: PRIORITY["prepare"]
    input:
        hmr=f"data/{HMR}/tok/train.{HMR}",
        lmr=lambda w: f"data/{w.pair}/tok/train.{lmr_of(w.pair)}",
    output:
        "data/{pair}/codes.{pair}",
    params:
        merges=config["bpe"]["joint_merges"],
    threads: config.get("threads", 1)
    conda:
        "../envs/relm.yaml"
    log:
        "logs/bpe_learn_joint/{pair}.log",
    benchmark:
        "benchmarks/bpe_learn_joint/{pair}.tsv"
    shell:
        "relm bpe learn --inputs {input.hmr:q} {input.lmr:q} --codes {output:q} --merges {params.merges:q} "
        "--threads {threads} > {log:q} 2>&1"


rule bpe_apply:
    priority: PRIORITY["prepare"]
    input:
        unpack(bpe_apply_inputs),
    output:
        "data/{group}/bpe-{codes}/{split}.{lang}",
    params:
        vocab=lambda w, input: f"--vocab {input.vocab}" if "vocab" in input.keys() else "",
    threads: text_threads
    conda:
        "../envs/relm.yaml"
    log:
        "logs/bpe_apply/{group}.{codes}.{split}.{lang}.log",
    benchmark:
        "benchmarks/bpe_apply/{group}.{codes}.{split}.{lang}.tsv"
    shell:
        "relm bpe apply --codes {input.codes:q} --input {input.text:q} --output {output:q} {params.vocab} "
        "--threads {threads} > {log:q} 2>&1"


if not RELEASED:  # see bpe_learn_hmr

    rule vocab_hmr:
        priority: PRIORITY["prepare"]
        input:
            "data/{lang}/bpe-hmr/train.{lang}",
        output:
            "data/{lang}/vocab.{lang}",
        conda:
            "../envs/relm.yaml"
        log:
            "logs/vocab_hmr/{lang}.log",
        shell:
            "relm vocab count --inputs {input:q} --output {output:q} > {log:q} 2>&1"


rule vocab_lmr:
    priority: PRIORITY["prepare"]
    input:
        lambda w: f"data/{w.pair}/bpe-joint/train.{lmr_of(w.pair)}",
    output:
        "data/{pair}/vocab.{lang}",
    conda:
        "../envs/relm.yaml"
    log:
        "logs/vocab_lmr/{pair}.{lang}.log",
    shell:
        "relm vocab count --inputs {input:q} --output {output:q} > {log:q} 2>&1"


rule vocab_joint:
    priority: PRIORITY["prepare"]
    input:
        hmr=f"data/{{pair}}/bpe-joint/train.{HMR}",
        lmr=lambda w: f"data/{w.pair}/bpe-joint/train.{lmr_of(w.pair)}",
    output:
        "data/{pair}/vocab.joint",
    conda:
        "../envs/relm.yaml"
    log:
        "logs/vocab_joint/{pair}.log",
    shell:
        "relm vocab count --inputs {input.hmr:q} {input.lmr:q} --output {output:q} > {log:q} 2>&1"


checkpoint extend_vocab:
    priority: PRIORITY["prepare"]
    input:
        hmr=f"data/{HMR}/vocab.{HMR}",
        lmr=lambda w: f"data/{w.pair}/vocab.{lmr_of(w.pair)}",
    output:
        sidecar="data/{pair}/vocab.{pair}-ext.json",
    params:
        lmr=lambda w: lmr_of(w.pair),
        hmr=HMR,
    conda:
        "../envs/relm.yaml"
    log:
        "logs/extend_vocab/{pair}.log",
    shell:
        "relm vocab extend --hmr-vocab {input.hmr:q} --lmr-vocab {input.lmr:q} --out-dir data/{wildcards.pair:q} "
        "--lmr {params.lmr:q} --hmr {params.hmr:q} > {log:q} 2>&1"


rule binarize:
    priority: PRIORITY["prepare"]
    input:
        text=binarize_text,
        vocab=binarize_vocab,
    output:
        multiext("data/{group}/bin-{dic}/{split}.{lang}", json=".json", tok=".tok.npy", off=".off.npy"),
    conda:
        "../envs/relm.yaml"
    log:
        "logs/binarize/{group}.{dic}.{split}.{lang}.log",
    benchmark:
        "benchmarks/binarize/{group}.{dic}.{split}.{lang}.tsv"
    shell:
        "relm binarize --input {input.text:q} --vocab {input.vocab:q} --output {output.json:q} --lang {wildcards.lang:q} > {log:q} 2>&1"
