"""Dashboard replicas behind Caddy without Docker, and a crowd through them.

`running_replicas` starts N Voilà servers (as dashboard_server.py does, each with its own
log) and Debian's caddy running the project's Caddyfile in plain HTTP in front of them
(DASHBOARD_UPSTREAMS naming each): tests/test_replicas.py and this benchmark share it.

As a script it sends benchmarks/crowd.py's simulated visitors through the proxy (they keep the
sticky cookie as a browser does), then reads each replica's log for the kernel websockets it
opened: how the visitors split. A websocket sent to a replica other than its page's would be
refused there (no such kernel) and its visitor not served.

    .venv/bin/python benchmarks/replicas.py [--replicas 2] [--visitors 20] [--rate 1] [--drawings 3] [--json]

The feedback goes to a fresh schema in TEST_DATABASE_URL (default the local `test` database),
dropped afterwards; crowd.py counts every answer in it exactly once.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dashboard_server import NOTEBOOK, free_port, stop_group, wait_until_listening

from digitlib import config

CADDY = "/usr/bin/caddy"
CADDYFILE = config.PROJ_ROOT / "Caddyfile"
REPLICA_HEADER = "X-Digitlab-Replica"
HEALTH_URI = "/voila/static/materialcolors.css"  # the Caddyfile's health_uri (tests/test_deploy.py checks it)
CONNECTING = re.compile(r"Connecting to kernel ([0-9a-f-]{36})\.")  # jupyter_server logs each websocket


@dataclass
class ReplicaStack:
    url: str  # the proxy, http://127.0.0.1:port
    replicas: dict[str, subprocess.Popen]  # "127.0.0.1:port" -> its Voilà server
    logs: dict[str, Path]  # the same keys -> that server's log
    caddy_log: Path

    def kernels_opened(self) -> dict[str, set[str]]:
        """Per replica, the kernel ids whose websocket it opened."""
        return {
            upstream: set(CONNECTING.findall(log.read_text(errors="replace"))) for upstream, log in self.logs.items()
        }


def probe(url: str, timeout: float = 5) -> tuple[int, str]:
    """(status, replica) of a new visitor's request through the proxy, for the health file: no kernel starts."""
    try:
        with urllib.request.urlopen(url + HEALTH_URI, timeout=timeout) as response:
            return response.status, response.headers.get(REPLICA_HEADER, "")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get(REPLICA_HEADER, "")


def start_replica(port: int, env: dict, log: Path, extra_args=()) -> subprocess.Popen:
    """A Voilà server as dashboard_server.py starts one, its log kept (the replica's own record)."""
    command = [sys.executable, "-m", "voila", str(NOTEBOOK), f"--port={port}", "--no-browser", *extra_args]
    with log.open("wb") as out:
        return subprocess.Popen(
            command, cwd=config.PROJ_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


@contextmanager
def running_replicas(env: dict, folder: Path, count: int = 2, extra_args=("--pool_size=1",)) -> Iterator[ReplicaStack]:
    """`count` listening replicas behind a caddy that has reached each of them; all stopped on exit."""
    if not Path(CADDY).is_file():
        raise FileNotFoundError(f"{CADDY} is missing: `make caddy` installs Debian's caddy")
    replicas: dict[str, subprocess.Popen] = {}
    logs: dict[str, Path] = {}
    caddy = None
    try:
        for i in range(count):
            port = free_port()
            upstream = f"127.0.0.1:{port}"
            logs[upstream] = folder / f"replica-{i}.log"
            replicas[upstream] = start_replica(port, env, logs[upstream], extra_args)
        for upstream, process in replicas.items():
            wait_until_listening(int(upstream.rsplit(":", 1)[1]), process, timeout=120)
        proxy_port = free_port()
        caddy_env = {
            "PATH": os.environ["PATH"],
            # Caddy keeps its state (a local CA, were it asked for one) here, not in ~/.local.
            "HOME": str(folder),
            "XDG_DATA_HOME": str(folder / "caddy-data"),
            "XDG_CONFIG_HOME": str(folder / "caddy-config"),
            "SITE_ADDRESS": f"http://127.0.0.1:{proxy_port}",
            "LAB_ADDRESS": f"http://127.0.0.1:{free_port()}",
            "CADDY_ADMIN": f"127.0.0.1:{free_port()}",
            "DASHBOARD_UPSTREAMS": " ".join(replicas),
        }
        caddy_log = folder / "caddy.log"
        with caddy_log.open("wb") as log:
            caddy = subprocess.Popen(
                [CADDY, "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
                env=caddy_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        stack = ReplicaStack(f"http://127.0.0.1:{proxy_port}", replicas, logs, caddy_log)
        wait_for_replicas(stack, caddy)
        yield stack
    finally:
        if caddy is not None:
            stop_group(caddy)
        for process in replicas.values():
            try:
                os.killpg(process.pid, signal.SIGCONT)  # a replica a test froze must run to stop
            except ProcessLookupError:
                pass
            stop_group(process)


def wait_for_replicas(stack: ReplicaStack, caddy: subprocess.Popen, timeout: float = 60) -> None:
    """Until cookie-less requests through the proxy have reached every replica."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while seen != set(stack.replicas):
        if caddy.poll() is not None:
            raise RuntimeError(f"caddy exited with code {caddy.returncode}: {stack.caddy_log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the proxy reached {sorted(seen)}, not {sorted(stack.replicas)}")
        try:
            status, replica = probe(stack.url, timeout=3)
            if status == 200:
                seen.add(replica)
        except OSError:
            pass
        time.sleep(0.2)


@contextmanager
def fresh_schema(base_url: str) -> Iterator[str]:
    """A new schema in `base_url`'s PostgreSQL database, migrated as compose's migrate service does."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(base_url, connect_args={"connect_timeout": 3})
    schema = f"replicas_{uuid.uuid4().hex[:12]}"
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))  # a name made here, not input
    try:
        url = make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(False)
        migrate = [sys.executable, "-m", "digitlib.migrations", "upgrade", "--url", url]
        done = subprocess.run(migrate, cwd=config.PROJ_ROOT, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"migration failed: {done.stderr[-2000:]}")
        yield url
    finally:
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--visitors", type=int, default=20)
    parser.add_argument("--rate", type=float, default=1.0, help="visitors arriving per second")
    parser.add_argument("--drawings", type=int, default=3)
    parser.add_argument("--think", default="2,3")
    parser.add_argument("--model", default=None, help="model directory (default: the registry's current)")
    parser.add_argument("--json", action="store_true", help="one line of JSON")
    args = parser.parse_args(argv)
    base_url = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
    with fresh_schema(base_url) as database_url, tempfile.TemporaryDirectory(prefix="digitlab-replicas-") as tmp:
        env = {**os.environ, config.DATABASE_URL.name: database_url}
        # All simulated visitors share one address: lift the per-client cap, as crowd.py does for its own server.
        env |= {"DIGITLIB_MAX_KERNELS": "1000", "DIGITLIB_MAX_KERNELS_PER_CLIENT": "1000"}
        if args.model:
            env[config.MODEL_DIR.name] = args.model
        with running_replicas(env, Path(tmp), args.replicas, extra_args=()) as stack:
            crowd = [sys.executable, str(Path(__file__).with_name("crowd.py")), "--url", stack.url + "/"]
            crowd += ["--database-url", database_url, "--visitors", str(args.visitors), "--rate", str(args.rate)]
            crowd += ["--drawings", str(args.drawings), "--think", args.think, "--json"]
            done = subprocess.run(crowd, cwd=config.PROJ_ROOT, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"crowd.py failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            opened = stack.kernels_opened()
    result |= {
        "replicas": args.replicas,
        "kernel_websockets_per_replica": sorted(len(kernels) for kernels in opened.values()),
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
