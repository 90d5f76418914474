"""Dashboard kernels forked from a warm template process (a "zygote") instead of started cold.

A visitor kernel used to spend about half its start importing the same modules every other
kernel imports (ipykernel, IPython, ipywidgets, anywidget, numpy, Pillow, SQLAlchemy, digitlib).
The zygote imports them once, then waits on a unix socket; each kernel is a fork of it, so it
starts with those modules loaded and shares their memory pages with its siblings.

- `Zygote` (started by the Voilà server's kernel manager, digitlib.voila_guard) runs this module:
  `python -m digitlib.kernel_zygote SOCKET`. It has created no zmq context, event loop, thread or
  ONNX Runtime session when it forks (it checks that it is single-threaded, else refuses to
  serve); ipycanvas and digitlib.dashboard are not preloaded (ipycanvas makes a widget when
  imported, which needs the kernel's comm manager).
- `digitlib/kernel_launcher.py` is what the kernel manager runs instead of
  `python -m ipykernel_launcher -f CONNECTION_FILE`: it hands its argv, environment, working
  directory and stdin/stdout/stderr to the zygote over the socket, stays alive as the process the
  kernel manager watches and signals, forwards the signals to the forked kernel and exits when
  the kernel does. The kernel exits when the launcher dies (the socket between them closes).
  Without a zygote (not started, still importing after a while, or failed) the launcher runs
  the kernel's own command: a normal start.

Setting: DIGITLIB_KERNEL_ZYGOTE ("1" by default; "0" starts every kernel cold).
"""

from __future__ import annotations

import array
import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from digitlib.kernel_launcher import KERNEL_MODULE

LAUNCHER = Path(__file__).resolve().parent / "kernel_launcher.py"
# What every dashboard kernel imports, imported once here. Not ipycanvas, not digitlib.dashboard (it
# imports ipycanvas): ipycanvas creates a widget at import, which must belong to the kernel's own comm
# manager. Not onnxruntime: importing it starts a thread (and costs ~30 ms in the kernel).
PRELOAD = (
    "ipykernel.kernelapp",
    "ipykernel.ipkernel",
    "ipykernel.zmqshell",
    "ipykernel.debugger",  # debugpy: imported by every kernel's start (the debugger itself is not started)
    "IPython.core.debugger",
    "sqlite3",  # IPython's history
    "psutil",
    "tornado.ioloop",
    "IPython.core.interactiveshell",
    "IPython.core.completer",
    "ipywidgets",
    "anywidget",
    "comm",
    "numpy",
    "PIL.Image",
    "PIL.ImageDraw",
    "sqlalchemy",
    "sqlalchemy.dialects.sqlite",
    "sqlalchemy.dialects.postgresql",
    "digitlib.config",
    "digitlib.preprocess",
    "digitlib.serving",
    "digitlib.registry",
    "digitlib.store",
    "digitlib.limits",
    "digitlib.stroke_pad",
)


def enabled() -> bool:
    from digitlib import config

    return config.KERNEL_ZYGOTE.get().strip() not in ("0", "false", "no", "off", "")


# --- the zygote process ---------------------------------------------------------------------------


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def preload(names=PRELOAD) -> list[str]:
    """Import what kernels import; returns the names that failed (a kernel imports them itself)."""
    import importlib

    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a missing optional module only costs the kernel its import
            failed.append(name)
    return failed


def serve(socket_path: str) -> None:
    """Bind first (launchers may connect while it imports), preload, then fork a kernel per request."""
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(64)
    failed = preload()
    if failed:
        print(f"digitlib zygote: could not preload {', '.join(failed)}", file=sys.stderr)
    if _threads() != 1:  # fork copies only this thread: a lock held by another would stay held
        print(f"digitlib zygote: {_threads()} threads after preloading, not forking kernels", file=sys.stderr)
        listener.close()  # launchers waiting get EOF and start their kernels cold
        return
    listener.settimeout(1.0)
    while os.getppid() == parent:  # the server is gone: so is the zygote (its kernels stay with their launchers)
        _reap()
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            continue
        try:
            _fork_kernel(listener, conn)
        except Exception as e:  # noqa: BLE001 - one bad request must not stop the zygote
            print(f"digitlib zygote: request refused: {e}", file=sys.stderr)
        finally:
            conn.close()


def _reap() -> None:
    """Collect exited kernels (their CPU time then counts in this process's children times)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _recv_request(conn: socket.socket) -> tuple[dict, list[int]]:
    conn.settimeout(10)
    data, fds = b"", []
    while not data.endswith(b"\n"):
        msg, ancdata, _flags, _addr = conn.recvmsg(65536, socket.CMSG_SPACE(3 * array.array("i").itemsize))
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds_array = array.array("i")
                fds_array.frombytes(payload[: len(payload) - (len(payload) % fds_array.itemsize)])
                fds.extend(fds_array)
        if not msg:
            raise ConnectionError("launcher closed the socket before its request")
        data += msg
        if len(data) > 1 << 20:
            raise ValueError("request too long")
    request = json.loads(data)
    if not isinstance(request, dict) or not isinstance(request.get("argv"), list):
        raise ValueError("request without argv")
    return request, fds


def _fork_kernel(listener: socket.socket, conn: socket.socket) -> None:
    request, fds = _recv_request(conn)
    try:
        pid = os.fork()
        if pid == 0:  # the kernel
            code = 1
            try:
                listener.close()
                code = _run_kernel(conn, request, fds)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 0
            except BaseException:  # noqa: BLE001 - print it where the kernel's stderr goes, then exit
                import traceback

                traceback.print_exc()
            finally:
                try:
                    atexit._run_exitfuncs()
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
    finally:
        for fd in fds:
            os.close(fd)


def _watch_launcher(conn: socket.socket) -> None:
    """The launcher closes its end when it dies (killed by the kernel manager): the kernel goes too."""
    try:
        while conn.recv(64):
            pass
    except OSError:
        pass
    os._exit(1)


def _run_kernel(conn: socket.socket, request: dict, fds: list[int]) -> int:
    os.setsid()  # its own session: signals to the zygote's group never reach it
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in any Python process
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for target, fd in zip((0, 1, 2), fds, strict=False):  # the launcher's stdin, stdout, stderr
        os.dup2(fd, target)
    env = request.get("env") or {}
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in env.items()})
    # ipykernel would watch this pid as its parent; its parent is the zygote, so it would exit with
    # the zygote. It watches its launcher instead (_watch_launcher), which watches the server.
    os.environ.pop("JPY_PARENT_PID", None)
    cwd = request.get("cwd")
    if cwd:
        os.chdir(cwd)
    # Python's `random` reseeds itself in a fork; numpy's legacy global generator does not: every
    # kernel would draw the same numbers from it.
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    argv = [str(a) for a in request["argv"]]
    sys.argv = [KERNEL_MODULE, *argv]
    # ipykernel_launcher leaves the working directory off sys.path while it imports; the kernel's
    # InteractiveShellApp puts it back. The zygote's own sys.path[0] (its start directory) goes.
    if sys.path and sys.path[0] in ("", str(Path.cwd()), os.getcwd()):
        del sys.path[0]
    conn.settimeout(None)
    conn.sendall(f"{os.getpid()}\n".encode())
    threading.Thread(target=_watch_launcher, args=(conn,), daemon=True, name="launcher-watch").start()
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()  # as kernelapp.launch_new_instance, with the widgets' comm targets
    app.initialize()
    _register_preloaded_comm_targets(app.shell)
    app.start()
    return 0


def _register_preloaded_comm_targets(shell) -> None:
    """ipywidgets registers its comm targets when imported inside a kernel; the zygote imported it
    before there was one, so the kernel registers them now (ipywidgets' IPython extension hook)."""
    import ipywidgets

    ipywidgets.load_ipython_extension(shell)


# --- the server side: start and stop the zygote, the launcher command --------------------------


class Zygote:
    """The zygote process for one Python command (the kernelspec's interpreter and flags)."""

    def __init__(self, python: list[str]):
        import tempfile

        self.python = list(python)
        self.dir = tempfile.mkdtemp(prefix="digitlib-zygote-")  # 0700: only this user may ask for kernels
        self.socket_path = os.path.join(self.dir, "zygote.sock")
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # debugpy, imported here, warns about frozen modules once
        self.process = subprocess.Popen(
            [*self.python, "-m", "digitlib.kernel_zygote", self.socket_path],
            env=env,
            cwd=str(Path(__file__).resolve().parent.parent),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not os.path.exists(self.socket_path) and self.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        atexit.register(self.stop)

    def alive(self) -> bool:
        return self.process.poll() is None and os.path.exists(self.socket_path)

    def command(self, cmd: list[str]) -> list[str]:
        """The launcher's command for a kernel command, or `cmd` itself when the zygote cannot start it."""
        n = len(self.python)
        if cmd[:n] != self.python or cmd[n : n + 2] != ["-m", KERNEL_MODULE] or not self.alive():
            return cmd
        return [self.python[0], "-I", "-S", str(LAUNCHER), self.socket_path, "--", *cmd]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        try:
            os.unlink(self.socket_path)
            os.rmdir(self.dir)
        except OSError:
            pass


def python_of(argv: list[str]) -> list[str] | None:
    """[interpreter, flags...] of a kernelspec argv `python [flags] -m ipykernel_launcher ...`, else None."""
    if "-m" not in argv:
        return None
    i = argv.index("-m")
    if argv[i + 1 : i + 2] != [KERNEL_MODULE]:
        return None
    return argv[:i]


if __name__ == "__main__":
    serve(sys.argv[1])
