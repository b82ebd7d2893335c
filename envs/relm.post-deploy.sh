#!/usr/bin/env bash
# Run by `snakemake --sdm conda` inside the new environment of envs/relm.yaml, from the directory Snakemake runs
# in: installs the relm package (editable, without dependencies: relm.yaml has them) from that directory, which
# must be the relm repository root, so that the rules' `relm` command is the checkout's code.
set -euo pipefail
if ! grep -qs '^name = "relm"$' pyproject.toml; then
    echo "envs/relm.post-deploy.sh: $(pwd) is not the relm repository root; run snakemake --sdm conda from there" >&2
    exit 1
fi
python -m pip install --no-deps --no-build-isolation --quiet -e .
relm --help > /dev/null
