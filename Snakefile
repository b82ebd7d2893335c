# relm: RE-LM unsupervised MT, end to end. `snakemake --cores 2` runs the built-in demo;
# `snakemake --profile slurm all` sends every job to SLURM. See README.md.

# The demo config, unless the user gives one (`--configfile config/paper.yaml`): config files are not merged, but
# `--config key=value` overrides either.
if not workflow.overwrite_configfiles:

    configfile: f"{workflow.basedir}/config/config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/text.smk"
include: "rules/mlm.smk"
include: "rules/unmt.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),
