# Results: score tables (whole study and per pair), training curves, the BLEU bar chart, the compute table,
# all marked for `snakemake --report results/report.html`.


rule tables:
    input:
        [f for pair in PAIRS for f in score_files(pair)],
    output:
        tsv=report("results/scores.tsv", caption="../report/tables.rst", category="Tables"),
        md=report("results/bleu.md", caption="../report/tables.rst", category="Tables"),
        tex="results/bleu.tex",
    conda:
        "../envs/relm.yaml"
    log:
        "logs/tables/all.log",
    shell:
        "relm tables --scores {input:q} --out-dir results > {log:q} 2>&1"


rule pair_tables:
    input:
        lambda w: score_files(w.pair),
    output:
        tsv="results/{pair}/scores.tsv",
        md=report("results/{pair}/bleu.md", caption="../report/tables.rst", category="{pair}"),
        tex="results/{pair}/bleu.tex",
    conda:
        "../envs/relm.yaml"
    log:
        "logs/tables/{pair}.log",
    shell:
        "relm tables --scores {input:q} --out-dir results/{wildcards.pair:q} > {log:q} 2>&1"


rule curves:
    input:
        lambda w: pair_metrics(w.pair).values(),
    output:
        report("results/{pair}/curves.png", caption="../report/curves.rst", category="{pair}"),
    params:
        metrics=lambda w: corpus_args("--metrics", pair_metrics(w.pair)),
    conda:
        "../envs/relm.yaml"
    log:
        "logs/curves/{pair}.log",
    shell:
        "relm plots {params.metrics} --curves {output:q} > {log:q} 2>&1"


rule bars:
    input:
        "results/scores.tsv",
    output:
        report("results/bleu.png", caption="../report/bars.rst", category="Tables"),
    conda:
        "../envs/relm.yaml"
    log:
        "logs/bars/all.log",
    shell:
        "relm plots --scores-tsv {input:q} --bars {output:q} > {log:q} 2>&1"


rule compute:
    input:
        benchmark_files().values(),
    output:
        report("results/compute.md", caption="../report/compute.rst", category="Compute"),
    params:
        benchmarks=corpus_args("--benchmark", {k.replace(" ", "_"): v for k, v in benchmark_files().items()}),
        cores=local_cores(),
    conda:
        "../envs/relm.yaml"
    log:
        "logs/compute/all.log",
    shell:
        "relm compute {params.benchmarks} --cores {params.cores} --output {output:q} > {log:q} 2>&1"
