"""Dashboard kernels forked from the kernel zygote (digitlib/kernel_zygote.py, kernel_launcher.py)."""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil
import pytest

from digitlib import kernel_launcher
from digitlib.kernel_zygote import LAUNCHER, Zygote, python_of


def test_python_of_a_kernelspec():
    assert python_of(["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]) == ["python"]
    assert python_of(["/v/python", "-Xfrozen_modules=off", "-m", "ipykernel_launcher", "-f", "x"]) == [
        "/v/python",
        "-Xfrozen_modules=off",
    ]
    assert python_of(["R", "--slave", "-e", "IRkernel::main()"]) is None
    assert python_of(["python", "-m", "other_kernel"]) is None


def test_benchmarks_count_forked_kernels_not_launchers():
    from dashboard_server import is_kernel_process

    zygote = ["/v/python", "-m", "digitlib.kernel_zygote", "/tmp/z/zygote.sock"]
    launcher = [
        "/v/python",
        "-I",
        "-S",
        str(LAUNCHER),
        "/tmp/z/zygote.sock",
        "--",
        "python",
        "-m",
        "ipykernel_launcher",
    ]
    assert is_kernel_process(["python", "-m", "ipykernel_launcher", "-f", "c.json"], ["voila"])
    assert is_kernel_process(zygote, zygote)  # a fork of the zygote
    assert not is_kernel_process(zygote, ["python", "-m", "voila"])  # the zygote itself
    assert not is_kernel_process(launcher, ["python", "-m", "voila"])


def test_launcher_without_a_zygote_starts_cold(tmp_path):
    """No zygote on the socket: the launcher gives up at once (it then execs the kernel's own command)."""
    assert kernel_launcher.forked_kernel(str(tmp_path / "none.sock"), ["python", "-m", "ipykernel_launcher"]) is None


def _run(kc, code: str) -> str:
    out: list[str] = []
    reply = kc.execute_interactive(code, output_hook=lambda m: out.append(m["content"].get("text", "")), timeout=30)
    assert reply["content"]["status"] == "ok", reply["content"]
    return "".join(out).strip()


def _gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_forked_kernel_lives_and_dies_with_its_launcher(tmp_path):
    from jupyter_client import KernelManager

    zygote = Zygote([sys.executable])
    try:

        class ForkedKernelManager(KernelManager):
            def format_kernel_cmd(self, extra_arguments=None):
                return zygote.command(super().format_kernel_cmd(extra_arguments))

        km = ForkedKernelManager(kernel_name="python3")
        km.start_kernel(env={**os.environ, "H12_PROBE": "passed"}, cwd=str(tmp_path))
        assert km.provisioner.process.args[:4] == [sys.executable, "-I", "-S", str(LAUNCHER)]
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        pid, ppid, probe, cwd, preloaded = _run(
            kc,
            "import os, sys; print(os.getpid(), os.getppid(), os.environ.get('H12_PROBE'), os.getcwd(),"
            " 'sqlalchemy' in sys.modules and 'ipycanvas' not in sys.modules)",
        ).split()
        pid, ppid = int(pid), int(ppid)
        assert ppid == zygote.process.pid  # a fork of the zygote, not a fresh interpreter
        assert (probe, cwd, preloaded) == ("passed", str(tmp_path), "True")
        # Each fork draws its own random numbers (numpy's global generator is reseeded).
        draws = {_run(kc, "import numpy; print(numpy.random.randint(1 << 30))")}
        # ipywidgets, imported before the kernel existed, still answers the page's widget comms.
        targets = _run(kc, "print(sorted(get_ipython().kernel.comm_manager.targets))")
        assert "'jupyter.widget'" in targets and "'jupyter.widget.control'" in targets
        # The dashboard builds in it (ipycanvas imported by the kernel itself).
        assert _run(kc, "from digitlib.dashboard import build_dashboard; print(type(build_dashboard()).__name__)") in (
            "VBox",
            "HTML",
        )
        # An interrupt reaches the forked kernel through its launcher.
        sleeping = kc.execute("import time; print('asleep', flush=True); time.sleep(30)")
        while True:  # interrupt once the cell runs (its first output), not after a guessed wait
            msg = kc.get_iopub_msg(timeout=10)
            if msg["parent_header"].get("msg_id") == sleeping and msg["msg_type"] == "stream":
                break
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=10)
        while reply["msg_type"] != "execute_reply":
            reply = kc.get_shell_msg(timeout=10)
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        # Restart: a new fork, the old kernel gone.
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=60)
        assert _gone(pid)
        pid = int(_run(kc, "import os; print(os.getpid())"))
        draws.add(_run(kc, "import numpy; print(numpy.random.randint(1 << 30))"))
        assert len(draws) == 2
        # The kernel manager kills the launcher (SIGKILL): the kernel exits with it.
        os.kill(km.provisioner.process.pid, signal.SIGKILL)
        assert _gone(pid)
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        # A graceful shutdown ends kernel and launcher.
        km = ForkedKernelManager(kernel_name="python3")
        km.start_kernel(env=dict(os.environ))
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        pid = int(_run(kc, "import os; print(os.getpid())"))
        launcher = km.provisioner.process.pid
        kc.stop_channels()
        km.shutdown_kernel()
        assert _gone(pid) and _gone(launcher)
    finally:
        zygote.stop()
    assert zygote.process.poll() is not None and not os.path.exists(zygote.socket_path)
