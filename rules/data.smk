# Acquisition: the synthetic demo pair, local copies and verified downloads (with deterministic sampling).


rule synth:
    priority: PRIORITY["prepare"]
    output:
        directory("data/synth/{name}"),
    params:
        hmr=lambda w: config["synthetic"][w.name]["hmr"],
        lmr=lambda w: config["synthetic"][w.name]["lmr"],
        settings=lambda w: json.dumps(
            {k: v for k, v in config["synthetic"][w.name].items() if k not in ("hmr", "lmr")}, sort_keys=True
        ),
        seed=config.get("seed", 0),
    conda:
        "../envs/relm.yaml"
    log:
        "logs/synth/{name}.log",
    shell:
        "relm synth --out-dir {output:q} --hmr {params.hmr:q} --lmr {params.lmr:q} --seed {params.seed:q} "
        "--settings {params.settings:q} > {log:q} 2>&1"


# Downloads run in the Snakemake process itself (on a cluster: the login node), so compute nodes may be offline.
# The mirrors are params: changing them later reruns the downloads and what follows (set them before the first run).
localrules:
    fetch,
    fetch_train,


rule fetch:
    priority: PRIORITY["prepare"]
    input:
        unpack(fetch_inputs),
    output:
        "data/{group}/raw/{split}.{lang}",
    wildcard_constraints:
        split="valid|test",
    params:
        source=fetch_source,
        lines=lambda w: source_of(w).get("lines", 0),
        seed=config.get("seed", 0),
        lock=LOCK,
        mirrors=json.dumps(config.get("mirrors", {}), sort_keys=True),
    conda:
        "../envs/relm.yaml"
    log:
        "logs/fetch/{group}.{split}.{lang}.log",
    shell:
        "relm fetch --source {params.source:q} --out {output:q} --lines {params.lines:q} --seed {params.seed:q} "
        "--lock {params.lock:q} --mirrors {params.mirrors:q} > {log:q} 2>&1"


rule fetch_train:
    priority: PRIORITY["prepare"]
    input:
        unpack(fetch_inputs),
    output:
        temp("data/{group}/raw/fetched/train.{lang}"),
    params:
        source=fetch_source,
        lines=lambda w: source_of(w).get("lines", 0),
        seed=config.get("seed", 0),
        lock=LOCK,
        mirrors=json.dumps(config.get("mirrors", {}), sort_keys=True),
    conda:
        "../envs/relm.yaml"
    log:
        "logs/fetch/{group}.train.{lang}.log",
    shell:
        "relm fetch --source {params.source:q} --out {output:q} --lines {params.lines:q} --seed {params.seed:q} "
        "--lock {params.lock:q} --mirrors {params.mirrors:q} > {log:q} 2>&1"


rule clean:
    priority: PRIORITY["prepare"]
    input:
        train="data/{group}/raw/fetched/train.{lang}",
        exclude=eval_sides,
    output:
        "data/{group}/raw/train.{lang}",
    conda:
        "../envs/relm.yaml"
    log:
        "logs/clean/{group}.{lang}.log",
    shell:
        "relm clean --train {input.train:q} --exclude {input.exclude:q} --out {output:q} > {log:q} 2>&1"


rule check_parallel:
    priority: PRIORITY["prepare"]
    input:
        src=lambda w: f"data/{w.pair}/raw/{w.split}.{lmr_of(w.pair)}",
        tgt=f"data/{{pair}}/raw/{{split}}.{HMR}",
    output:
        "data/{pair}/raw/{split}.parallel.json",
    wildcard_constraints:
        split="valid|test",
    conda:
        "../envs/relm.yaml"
    log:
        "logs/check_parallel/{pair}.{split}.log",
    shell:
        "relm check-parallel --src {input.src:q} --tgt {input.tgt:q} --output {output:q} > {log:q} 2>&1"
