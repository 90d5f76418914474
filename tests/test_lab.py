"""A student's path through JupyterLab: `make lab` starts (as root too) and serves /lab with its token,
the notebooks name the kernel it installs, and opening and saving a notebook in Lab leaves nothing
tracked changed once the commit hook has run."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest
import yaml
from dashboard_server import free_port

from digitlib import config, experiments

ROOT = config.PROJ_ROOT
NOTEBOOKS = sorted(config.NOTEBOOKS_DIR.glob("*.ipynb"))
PROJECT_KERNELSPEC = {"name": "digitlab", "display_name": "Python (digitlab)", "language": "python"}

needs_make = pytest.mark.skipif(not shutil.which("make"), reason="make is not installed")


def make_dry_run(target: str, *variables: str) -> list[str]:
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", "-o", ".venv/.installed", target, *variables],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.splitlines()


# --- one kernel name everywhere -----------------------------------------------------------------


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_names_the_project_kernel(path):
    metadata = nbformat.read(path, as_version=4).metadata
    assert metadata.kernelspec == PROJECT_KERNELSPEC
    assert metadata.kernelspec.name == experiments.KERNEL_NAME
    # The kernel fills language_info in when Lab opens the notebook; committed, it would differ
    # from one Python patch version to the next.
    assert "language_info" not in metadata


@needs_make
def test_make_lab_installs_the_kernel_the_notebooks_name():
    lines = make_dry_run("lab")
    install = shlex.split(next(line for line in lines if "ipykernel install" in line))
    assert install[install.index("--name") + 1] == PROJECT_KERNELSPEC["name"]
    assert install[install.index("--display-name") + 1] == PROJECT_KERNELSPEC["display_name"]
    # The image installs the same kernel for its lab and trainer.
    assert f"--name {PROJECT_KERNELSPEC['name']}" in (ROOT / "Dockerfile").read_text()


@needs_make
def test_lab_args_reach_jupyter():
    command = shlex.split(make_dry_run("lab", "LAB_ARGS=--ServerApp.iopub_data_rate_limit=1e9")[-1])
    assert command[-1] == "--ServerApp.iopub_data_rate_limit=1e9"


# --- opening and saving in Lab leaves the committed notebooks as they are ------------------------


def hook_command() -> list[str]:
    """The nbstripout hook of .pre-commit-config.yaml as pre-commit runs it."""
    spec = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    (hook,) = [h for repo in spec["repos"] for h in repo["hooks"] if h["id"] == "nbstripout"]
    return [*shlex.split(hook["entry"]), *hook.get("args", [])]


def lab_open_and_save(root: Path, relative: str, kernelspec: dict) -> None:
    """What JupyterLab does to a notebook: read it through the server's contents manager, set the
    running kernel's kernelspec and language_info (as its kernel_info reply gives them), save it back."""
    from ipykernel.ipkernel import IPythonKernel
    from jupyter_server.services.contents.filemanager import FileContentsManager
    from traitlets.config import Config

    settings = Config()
    settings.NotebookNotary.db_file = ":memory:"  # no signature database in the user's data dir
    manager = FileContentsManager(root_dir=str(root), config=settings)
    model = manager.get(relative, content=True, type="notebook")
    notebook = model["content"]
    notebook.metadata["kernelspec"] = dict(kernelspec)
    notebook.metadata["language_info"] = dict(IPythonKernel.language_info)
    manager.save({"type": "notebook", "content": notebook}, relative)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_a_notebook_saved_in_lab_is_unchanged_after_the_commit_hook(path, tmp_path):
    relative = str(path.relative_to(ROOT))
    copy = tmp_path / relative
    copy.parent.mkdir(parents=True)
    shutil.copyfile(path, copy)
    kernelspec = nbformat.read(path, as_version=4).metadata.kernelspec
    lab_open_and_save(tmp_path, relative, kernelspec)
    saved = copy.read_bytes()
    assert b"language_info" in saved  # what Lab added
    subprocess.run([*hook_command(), str(copy)], cwd=ROOT, check=True)
    assert copy.read_bytes() == path.read_bytes()


def test_the_commit_hook_strips_outputs_too(tmp_path):
    executed = tmp_path / "run.ipynb"
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="epoch 1/1: ...\n")]
    nb.cells[1].execution_count = 4
    nbformat.write(nb, executed)
    subprocess.run([*hook_command(), str(executed)], cwd=ROOT, check=True)
    assert executed.read_bytes() == NOTEBOOKS[0].read_bytes()


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("git"), reason="git is not installed")
def test_git_commit_with_the_hook_installed_commits_the_clean_notebook(tmp_path):
    """As a student would: `pre-commit install`, open and save in Lab, commit (the hook strips,
    the commit stops once, add again, commit): the repository holds the clean notebook."""
    repo = tmp_path / "clone"
    (repo / "notebooks").mkdir(parents=True)
    who = {f"GIT_{role}_{field}": value for role in ("AUTHOR", "COMMITTER") for field, value in
           (("NAME", "student"), ("EMAIL", "student@example.org"))}  # fmt: skip
    env = {**os.environ, **who, "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-cache")}

    def git(*args, check=True):
        return subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=check)

    git("init", "-q")
    shutil.copyfile(ROOT / ".pre-commit-config.yaml", repo / ".pre-commit-config.yaml")
    (repo / ".venv").symlink_to(ROOT / ".venv")  # the hook runs the project's .venv/bin/nbstripout
    # The project's ignores (Lab's .ipynb_checkpoints/ among them); .venv here is a link, not a folder.
    (repo / ".gitignore").write_text((ROOT / ".gitignore").read_text() + "\n.venv\n")
    source = NOTEBOOKS[0]
    shutil.copyfile(source, repo / "notebooks" / source.name)
    subprocess.run([sys.executable, "-m", "pre_commit", "install"], cwd=repo, env=env, check=True, capture_output=True)
    git("add", ".")
    git("commit", "-q", "-m", "clean notebooks")
    lab_open_and_save(repo, f"notebooks/{source.name}", PROJECT_KERNELSPEC)
    git("add", ".")
    first = git("commit", "-q", "-m", "saved in lab", check=False)
    assert first.returncode != 0 and "files were modified by this hook" in first.stdout + first.stderr
    # Staged: the notebook as Lab saved it; in the working tree: as the hook stripped it.
    assert git("status", "--porcelain").stdout.strip() == f"MM notebooks/{source.name}"
    git("add", ".")
    # Nothing left to commit: the stripped notebook is the one already committed.
    assert git("status", "--porcelain").stdout.strip() == ""
    assert git("show", f"HEAD:notebooks/{source.name}").stdout == source.read_text()


# --- make lab, started as the CI user (root in CI) -----------------------------------------------


def read_output(process: subprocess.Popen, lines: list[str]) -> threading.Thread:
    """Collect the server's output in the background (a full pipe would block it)."""

    def pump():
        for line in process.stdout:
            lines.append(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def wait_for_url(process: subprocess.Popen, lines: list[str], timeout: float = 180) -> str:
    """The URL with its token that Jupyter prints once it serves."""
    pattern = re.compile(r"http://127\.0\.0\.1:\d+/lab\?token=\w+")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        for line in list(lines):
            if match := pattern.search(line):
                return match.group(0)
        time.sleep(0.2)
    pytest.fail("make lab printed no URL with a token:\n" + "".join(lines[-30:]))


def start_lab(port: int) -> tuple[subprocess.Popen, list[str]]:
    process = subprocess.Popen(
        # port_retries=0: stop rather than serve on another port if a neighbour took this one.
        ["make", "--no-print-directory", "-o", ".venv/.installed", "lab", f"LAB_PORT={port}",
         "LAB_ARGS=--ServerApp.port_retries=0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: make, jupyter and any kernel stop together
    )  # fmt: skip
    lines: list[str] = []
    read_output(process, lines)
    return process, lines


@needs_make
@pytest.mark.slow
def test_make_lab_serves_lab_with_its_token_and_the_notebooks_kernel():
    for _ in range(3):  # other tests on this machine bind ports too: a free port may be taken again
        port = free_port()
        process, lines = start_lab(port)
        deadline = time.monotonic() + 180
        while process.poll() is None and not any("token=" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.2)
        if process.poll() is None or not any("already in use" in line for line in lines):
            break
    try:
        url = wait_for_url(process, lines)
        assert url.startswith(f"http://127.0.0.1:{port}/lab?token="), "".join(lines[-30:])
        token = url.split("token=", 1)[1]
        with urllib.request.urlopen(url, timeout=30) as page:
            assert page.status == 200 and "JupyterLab" in page.read().decode()
        # Without the token there is no way in.
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents/notebooks", timeout=30)
        assert refused.value.code == 403
        # Each notebook's kernel is one the server offers: Lab opens it without asking.
        specs = json_get(f"http://127.0.0.1:{port}/api/kernelspecs?token={token}")["kernelspecs"]
        for path in NOTEBOOKS:
            model = json_get(f"http://127.0.0.1:{port}/api/contents/notebooks/{path.name}?token={token}")
            name = model["content"]["metadata"]["kernelspec"]["name"]
            assert name in specs and specs[name]["spec"]["display_name"] == PROJECT_KERNELSPEC["display_name"]
    except (OSError, AssertionError) as e:
        raise AssertionError(f"{e}\nmake lab's output:\n" + "".join(lines[-40:])) from e
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def json_get(url: str) -> dict:
    import json

    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())
