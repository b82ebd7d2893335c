"""The README's two commands are the ones CI and users run."""
from workflow_utils import REPO


def readme_commands():
    lines = (REPO / "README.md").read_text().splitlines()[:40]
    return [ln.strip() for ln in lines if ln.strip().startswith("python3 -m venv .venv && . .venv/bin/activate && ")]


def test_readme_starts_with_demo_and_test_commands():
    demo, test = readme_commands()[:2]
    assert demo.endswith("snakemake --cores 2")
    assert "pytest" in test


def test_ci_runs_the_readme_test_command():
    test = readme_commands()[1]
    ci = [ln.strip() for ln in (REPO / ".ci" / "run").read_text().splitlines() if not ln.startswith("#")]
    assert test in ci
