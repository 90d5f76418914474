"""Start and stop the Voilà dashboard server as a subprocess (test and benchmark infrastructure).

Tests (tests/conftest.py puts this folder on sys.path) and benchmarks start the real server the
way `make dashboard` does (voila.json: preheated kernels), in a process group of its own so that
stopping it takes the kernels too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import psutil

from digitlib import config

NOTEBOOK = config.PROJ_ROOT / "dashboards" / "digits.ipynb"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_voila(
    port: int, env: dict, notebook: Path = NOTEBOOK, extra_args: Sequence[str] = (), log: Path | None = None
) -> subprocess.Popen:
    """Voilà serving `notebook` on `port`, in a process group of its own; its output goes to `log` if given."""
    command = [sys.executable, "-m", "voila", str(notebook), f"--port={port}", "--no-browser", *extra_args]
    # A file, never a pipe: a full pipe would block the server.
    output = open(log, "ab") if log else subprocess.DEVNULL  # the child keeps its own copy
    try:
        return subprocess.Popen(
            command,
            cwd=config.PROJ_ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        if log:
            output.close()


def wait_until_listening(port: int, process: subprocess.Popen, timeout: float = 90) -> None:
    """Poll until the server accepts connections; fail early if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"voila exited with code {process.returncode} before listening on port {port}")
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"voila did not listen on port {port} within {timeout} s")


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the server's whole process group (kernels included), SIGKILL if it lingers."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        except ProcessLookupError:
            pass
    except ProcessLookupError:
        pass


@contextmanager
def running_voila(
    env: dict,
    timeout: float = 90,
    notebook: Path = NOTEBOOK,
    extra_args: Sequence[str] = (),
    log: Path | None = None,
) -> Iterator[tuple[int, subprocess.Popen]]:
    """(port, process) of a listening Voilà server; the group is stopped on exit, whatever happens."""
    port = free_port()
    process = start_voila(port, env, notebook, extra_args, log)
    try:
        wait_until_listening(port, process, timeout)
        yield port, process
    finally:
        stop_group(process)


def is_kernel_process(cmdline: Sequence[str], parent_cmdline: Sequence[str] = ()) -> bool:
    """A kernel's process: started cold (python -m ipykernel_launcher) or forked by the kernel zygote
    (a child of the zygote, with its command line); not the zygote itself, not a kernel's launcher
    (digitlib/kernel_launcher.py, whose command line ends in the kernel's own command)."""
    line = " ".join(cmdline)
    if "kernel_launcher.py" in line:
        return False
    if "ipykernel" in line:
        return True
    return "digitlib.kernel_zygote" in line and "digitlib.kernel_zygote" in " ".join(parent_cmdline)


def is_kernel(process: psutil.Process) -> bool:
    """is_kernel_process for a live psutil.Process (False once it is gone)."""
    try:
        parent = process.parent()
        return is_kernel_process(process.cmdline(), parent.cmdline() if parent else ())
    except psutil.Error:
        return False


def kernels_of(server_pid: int) -> list[psutil.Process]:
    """The kernel processes (psutil) under the server with `server_pid`."""
    return [p for p in psutil.Process(server_pid).children(recursive=True) if is_kernel(p)]
