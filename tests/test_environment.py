"""environment.yml (conda users) lists exactly the packages of pyproject.toml."""

import tomllib

import yaml

from digitlib import config


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((config.PROJ_ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    env = yaml.safe_load((config.PROJ_ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {p for p in pip if not p.startswith("-e")}
    assert listed == wanted, f"only in pyproject: {wanted - listed}; only in environment.yml: {listed - wanted}"
    assert any(p.startswith("-e .") for p in pip)  # digitlib itself


def test_torch_is_pinned_in_both():
    text = (config.PROJ_ROOT / "environment.yml").read_text()
    assert "torch==2.14.1" in text and "torchvision==0.29.1" in text
