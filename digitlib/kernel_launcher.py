"""A dashboard kernel's process as the kernel manager sees it, the kernel itself forked by the zygote.

    python -I -S kernel_launcher.py SOCKET -- python [flags] -m ipykernel_launcher -f CONNECTION_FILE

Run instead of the kernel's own command (digitlib.kernel_zygote): asks the zygote on SOCKET to
fork a kernel with this process's argv, environment, working directory and stdin/stdout/stderr,
forwards the signals the kernel manager sends (interrupt, terminate) to it and exits when it
does. When this process dies (SIGKILL), the socket closes and the kernel exits too. No zygote
answering: it becomes the kernel's own command (exec), a normal cold start.

Standard library only, run without site-packages: it starts in a few milliseconds.
"""

import array
import json
import os
import signal
import socket
import sys

KERNEL_MODULE = "ipykernel_launcher"
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
WAIT_S = 30.0  # the zygote may still be importing when the server's first kernels start


def cold_start(cmd):
    os.execv(cmd[0], cmd)


def forked_kernel(socket_path, cmd):
    """The forked kernel's pid and the socket to it, or None when no zygote answers."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(WAIT_S)
        sock.connect(socket_path)
        args = cmd[cmd.index(KERNEL_MODULE) + 1 :]
        request = json.dumps({"argv": args, "env": dict(os.environ), "cwd": os.getcwd()}).encode() + b"\n"
        fds = array.array("i", [0, 1, 2])
        sent = sock.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        sock.sendall(request[sent:])
        line = b""
        while not line.endswith(b"\n"):
            chunk = sock.recv(64)
            if not chunk:
                raise ConnectionError("the zygote closed the socket")
            line += chunk
        return int(line), sock
    except (OSError, ValueError):
        sock.close()
        return None


def main(argv):
    if len(argv) < 4 or argv[2] != "--":
        sys.exit("usage: kernel_launcher.py SOCKET -- KERNEL COMMAND")
    socket_path, cmd = argv[1], argv[3:]
    forked = forked_kernel(socket_path, cmd)
    if forked is None:
        cold_start(cmd)
        return 1  # not reached: exec replaced this process
    pid, sock = forked

    def forward(signum, _frame):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for signum in FORWARDED:
        signal.signal(signum, forward)
    # The kernel holds the other end: EOF when it exits. Once a second: is the server still there?
    # (A cold kernel polls its parent so too; the forked one watches this process instead.)
    parent = os.getppid()
    sock.settimeout(1.0)
    while True:
        try:
            if not sock.recv(64):
                break
        except TimeoutError:
            if os.getppid() != parent:
                forward(signal.SIGTERM, None)
                parent = os.getppid()
        except OSError:
            break
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
