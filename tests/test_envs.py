"""envs/relm.yaml (the conda environment of every rule under `snakemake --sdm conda`) and its post-deploy script:
the environment lists the package's dependencies, and the script installs the package from the repository root
into the environment it runs in (here a venv standing in for the conda environment)."""

import re
import subprocess
import sys
import tomllib

import pytest
import yaml

from workflow_utils import REPO

ENV = REPO / "envs" / "relm.yaml"
POST_DEPLOY = REPO / "envs" / "relm.post-deploy.sh"


def name(requirement):
    return re.split(r"[<>=!~ \[]", requirement, maxsplit=1)[0].lower()


def test_environment_lists_the_package_dependencies():
    env = yaml.safe_load(ENV.read_text())
    conda = env["dependencies"]
    assert "python=3.11" in conda
    pip = next(d["pip"] for d in conda if isinstance(d, dict))
    assert not [r for r in pip if r.startswith("-e") or r.startswith(".")], "relm itself comes from the post-deploy script"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert {name(r) for r in pip} == {name(r) for r in project["dependencies"]}
    readme_torch = re.search(r"pip install (torch==\S+)", (REPO / "README.md").read_text()).group(1)
    assert readme_torch in pip  # the same torch build as the README's commands


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A bare environment (no relm in it) that sees this Python's packages, as the conda environment has them."""
    path = tmp_path_factory.mktemp("env")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(path)], check=True)
    return path


@pytest.mark.parametrize("where", ["repository root", "elsewhere"])
def test_post_deploy_installs_relm_from_the_repository(venv, tmp_path, where):
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    cwd = REPO if where == "repository root" else tmp_path
    r = subprocess.run(["bash", str(POST_DEPLOY)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if where == "elsewhere":
        assert r.returncode == 1 and "not the relm repository root" in r.stderr
        return
    assert r.returncode == 0, r.stderr
    out = subprocess.run([str(venv / "bin" / "relm"), "--help"], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "relm" in out.stdout
    where_from = subprocess.run([str(venv / "bin" / "python"), "-c", "import relm; print(relm.__file__)"],
                                env=env, cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert where_from.startswith(str(REPO / "relm"))  # editable: the rules run the checkout's code
