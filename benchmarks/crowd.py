"""A crowd of dashboard visitors at the protocol level: a hundred fit on this machine.

Each simulated visitor (benchmarks/voila_client.py) loads the page, opens its kernel's
websocket and talks to the widgets as the real page does; it draws digits from the pen-digit
set (each stroke drawn at a pointer's 60 Hz, sent at its end as the page does), waits for each
stroke's prediction, clicks the true label and waits for "Saved", then leaves (the page's
shutdown beacon). Visitors arrive at
--rate a second. Reports visitors served, page open p50/p95/max, stroke end -> prediction
p50/p95/p99/max, answers sent vs rows stored (each visitor's answers found exactly once among
the rows of one session), RSS of the server plus kernels (peak total and per kernel) and CPU
(user+sys of the server's process tree over the run), and a kernel's start CPU.

    .venv/bin/python benchmarks/crowd.py [--visitors 50] [--rate 1] [--think 2,3] [--drawings 5] [--json]
    .venv/bin/python benchmarks/crowd.py --url http://host:8866/ --database-url URL  # a running server

Without --url it starts Voilà as `make dashboard` does, with a temporary SQLite database
(or --database-url), from --server-root (default this tree; a `git worktree` of an older
commit measures that commit's server with the same client).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dashboard_server import free_port, is_kernel, running_voila, stop_group, wait_until_listening  # noqa: E402
from voila_client import Visitor  # noqa: E402

from digitlib import config  # noqa: E402

# Caps a server may put on kernels (all simulated visitors share one address); raised for the
# run unless set by the caller, so the benchmark measures the machine rather than the cap.
CAP_SETTINGS = ("DIGITLIB_MAX_KERNELS", "DIGITLIB_MAX_KERNELS_PER_CLIENT")
MIB = 2**20


def load_drawings(path: str | Path, count: int, seed: int) -> list[dict]:
    """`count` different pen-digit drawings (no visitor draws one another drew)."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if count > len(rows):
        raise SystemExit(f"{count} drawings asked, {path} has {len(rows)}")
    return random.Random(seed).sample(rows, count)


class TreeMonitor:
    """Samples the server's process tree: RSS of it all and of each kernel; its CPU over the run."""

    def __init__(self, pid: int, interval_s: float = 1.0, limit_bytes: float = float("inf"), own: bool = False):
        self.root = psutil.Process(pid)
        self.interval_s, self.limit_bytes, self.own = interval_s, limit_bytes, own
        self.limit_hit = threading.Event()  # the tree passed --max-rss-gib: arrivals stop
        self.limit_hit_at: tuple[float, int, int] | None = None  # (t, RSS, kernels)
        self.peak_total = 0
        self.peak_kernels: list[int] = []  # per-kernel RSS when the tree peaked
        self.max_kernels = 0
        self.samples: list[tuple[float, int, int]] = []  # (t, total RSS, kernels)
        # RSS counts the libraries kernels share once per kernel; PSS splits them (slower to read).
        self.peak_pss = 0
        self.peak_pss_kernel_uss: list[int] = []
        self._count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def kernels(self) -> list[psutil.Process]:
        try:
            return [p for p in self.root.children(recursive=True) if is_kernel(p)]
        except psutil.NoSuchProcess:
            return []

    def cpu_s(self) -> float:
        """user+sys of the tree: the server, its reaped children and every live descendant with its
        own reaped children (kernels forked by the zygote are the zygote's to reap)."""
        t = self.root.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for p in self.root.children(recursive=True):
            try:
                c = p.cpu_times()
                total += c.user + c.system + c.children_user + c.children_system
            except psutil.NoSuchProcess:
                pass
        return total

    def tree(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def sample_pss(self) -> None:
        pss, uss = 0, []
        for p in self.tree():
            try:
                info = p.memory_full_info()
                pss += info.pss
                if p is not self.root and is_kernel(p):
                    uss.append(info.uss)
            except psutil.Error:
                pass
        if pss > self.peak_pss:
            self.peak_pss, self.peak_pss_kernel_uss = pss, uss

    def sample(self) -> None:
        self._count += 1
        if self._count % 5 == 1:
            self.sample_pss()
        rss, kernels = 0, []
        for p in self.tree():
            try:
                r = p.memory_info().rss
                rss += r
                if p is not self.root and is_kernel(p):
                    kernels.append(r)
            except psutil.NoSuchProcess:
                pass
        self.samples.append((time.monotonic(), rss, len(kernels)))
        self.max_kernels = max(self.max_kernels, len(kernels))
        if rss > self.peak_total:
            self.peak_total, self.peak_kernels = rss, kernels
        if rss > self.limit_bytes and not self.limit_hit.is_set():
            # Guard for a shared machine: a server that would take it all down is stopped here.
            self.limit_hit_at = self.samples[-1]
            self.limit_hit.set()
            if self.own:
                os.killpg(self.root.pid, signal.SIGTERM)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def own_cpu_s(self) -> float:
        t = self.root.cpu_times()
        return t.user + t.system

    def __enter__(self):
        self.own_cpu_start = self.own_cpu_s()
        self.cpu_start = self.cpu_s()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()
        try:
            self.cpu_total = self.cpu_s() - self.cpu_start
            self.own_cpu_total = self.own_cpu_s() - self.own_cpu_start
        except psutil.NoSuchProcess:  # stopped by the RSS guard
            self.cpu_total = self.own_cpu_total = float("nan")


def settled_kernels(monitor: TreeMonitor, expected: int, timeout: float = 120) -> list[float]:
    """CPU seconds each preheated kernel took to start and run the notebook, once they are idle."""
    deadline = time.monotonic() + timeout
    last: dict[int, float] = {}
    while time.monotonic() < deadline:
        now = {}
        for k in monitor.kernels():
            try:
                t = k.cpu_times()
                now[k.pid] = t.user + t.system
            except psutil.NoSuchProcess:
                pass
        if len(now) >= expected and now.keys() == last.keys() and all(now[p] - last[p] < 0.02 for p in now):
            return sorted(now.values())
        last = now
        time.sleep(1.0)
    return sorted(last.values())


def percentiles(values, qs=(50, 95, 99)) -> dict:
    if not values:
        return {f"p{q}": None for q in qs} | {"max": None}
    return {f"p{q}": round(float(np.percentile(values, q)), 1) for q in qs} | {"max": round(float(max(values)), 1)}


def visitor_run(args, url: str, start_at: float, drawings: list[dict], seed: int, visit_out: list, stop) -> None:
    rng = random.Random(seed)
    time.sleep(max(0.0, start_at - time.monotonic()))
    visitor = Visitor(url, timeout=args.timeout, fetch_assets=not args.no_assets)
    visit_out.append(visitor.visit)
    if stop.is_set():
        visitor.visit.error = "not started: the server passed --max-rss-gib"
        return
    try:
        visitor.open()
        for drawing in drawings:
            time.sleep(rng.uniform(*args.think))
            visitor.draw(drawing["strokes"])  # mouse, touch or pen: the page sends the same stroke message
            visitor.answer(drawing["label"], drawing["strokes"][0][0])
    except Exception as e:  # a timeout, a refused page, a dropped socket: what the visitor saw is the figure
        visitor.visit.error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    finally:
        visitor.close()


def stored_rows(database_url: str) -> list[dict]:
    """(session, submission, label, first point) of every stored answer, in insertion order."""
    from sqlalchemy import create_engine, select

    from digitlib.store import prediction_logs as t

    engine = create_engine(database_url)
    try:
        with engine.connect() as c:
            rows = c.execute(
                select(t.c.id, t.c.session_id, t.c.submission_id, t.c.true_label, t.c.strokes).order_by(t.c.id)
            ).all()
    finally:
        engine.dispose()
    return [
        {"session": r.session_id, "submission": r.submission_id, "label": r.true_label, "first": r.strokes[0][0]}
        for r in rows
    ]


def check_answers(visits, rows: list[dict], tolerance_px: float = 1.0) -> dict:
    """Every answer stored exactly once: each visitor's saved answers are one session's rows, in order.

    Answers are matched by label and first point (a browser maps page pixels to the canvas with
    a sub-pixel offset, hence the tolerance); drawings differ between visitors.
    """
    sessions: dict[str, list] = {}
    for r in rows:
        sessions.setdefault(r["session"], []).append((r["label"], r["first"][0], r["first"][1]))
    unmatched = list(sessions.values())

    def same(sent, stored) -> bool:
        return len(sent) == len(stored) and all(
            a[0] == b[0] and abs(a[1] - b[1]) <= tolerance_px and abs(a[2] - b[2]) <= tolerance_px
            for a, b in zip(sent, stored, strict=True)
        )

    matched = 0
    for v in visits:
        sent = v.saved
        if not sent:
            continue
        hit = next((i for i, stored in enumerate(unmatched) if same(sent, stored)), None)
        if hit is not None:
            unmatched.pop(hit)
            matched += 1
    saved = sum(v.answers_saved for v in visits)
    return {
        "answers_sent": sum(len(v.answers_sent) for v in visits),
        "answers_saved": saved,
        "rows_stored": len(rows),
        "distinct_submission_ids": len({r["submission"] for r in rows}),
        "answers_stored_exactly_once": not unmatched
        and matched == sum(1 for v in visits if v.answers_saved)
        and len(rows) == saved,
    }


@contextmanager
def server(args, database_url: str):
    """(url, pid) of the server to load: the one at --url, or a fresh Voilà of --server-root."""
    if args.url:
        yield args.url, args.server_pid
        return
    env = {**os.environ, config.DATABASE_URL.name: database_url}
    for name in CAP_SETTINGS:
        env.setdefault(name, str(args.visitors * 2 + 16))
    for pair in args.server_env:
        key, _, value = pair.partition("=")
        env[key] = value
    root = Path(args.server_root).resolve() if args.server_root else config.PROJ_ROOT
    if root == config.PROJ_ROOT:
        with running_voila(env) as (port, process):
            yield f"http://127.0.0.1:{port}/", process.pid
        return
    # Another tree (an older commit's worktree): its own digitlib, notebook and voila.json.
    env["PYTHONPATH"] = str(root)
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "voila",
        str(root / "dashboards" / "digits.ipynb"),
        f"--port={port}",
        "--no-browser",
    ]
    process = subprocess.Popen(
        command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_until_listening(port, process)
        yield f"http://127.0.0.1:{port}/", process.pid
    finally:
        stop_group(process)


def pool_size(root: Path) -> int:
    try:
        return int(json.loads((root / "voila.json").read_text())["VoilaConfiguration"].get("default_pool_size", 1))
    except (OSError, KeyError, ValueError):
        return 1


def drive_protocol(args, url: str, drawings: list[dict], stop: threading.Event) -> tuple[list, float]:
    """The simulated visitors, one thread each, arriving at --rate; returns (visits, client CPU s)."""
    me = psutil.Process()
    cpu0 = sum(me.cpu_times()[:2])
    outs: list[list] = []
    threads = []
    t0 = time.monotonic() + 0.5
    for i in range(args.visitors):
        mine = drawings[i * args.drawings : (i + 1) * args.drawings]
        outs.append([])
        th = threading.Thread(
            target=visitor_run, args=(args, url, t0 + i / args.rate, mine, args.seed + i, outs[-1], stop), daemon=True
        )
        th.start()
        threads.append(th)
    for th in threads:
        th.join()
    return [o[0] for o in outs if o], sum(me.cpu_times()[:2]) - cpu0


def run(args, drive=drive_protocol) -> dict:
    """Start (or find) the server, let `drive` bring the visitors, and gather the figures."""
    database_url = args.database_url or f"sqlite:///{Path(tempfile.mkdtemp()) / 'crowd.db'}"
    drawings = load_drawings(args.drawings_file, args.visitors * args.drawings, args.seed)
    root = Path(args.server_root).resolve() if args.server_root else config.PROJ_ROOT
    with ExitStack() as stack:
        url, pid = stack.enter_context(server(args, database_url))
        limit = args.max_rss_gib * 2**30
        monitor = TreeMonitor(pid, args.sample_s, limit, own=not args.url) if pid else None
        start_cpu = []
        if monitor and not args.url:
            preheated = int(os.environ.get("DIGITLIB_POOL_SIZE", pool_size(root)))
            start_cpu = settled_kernels(monitor, preheated)
        idle_rss = None
        if monitor:
            monitor.sample()
            idle_rss = monitor.samples[-1][1]
            stack.enter_context(monitor)
        started = time.monotonic()
        visits, client_cpu = drive(args, url, drawings, monitor.limit_hit if monitor else threading.Event())
        wall = time.monotonic() - started
    served = [v for v in visits if not v.error and v.answers_saved == args.drawings]
    opens = [v.page_open_s * 1000 for v in visits if v.page_open_s is not None]
    predict = [ms for v in visits for ms in v.predict_ms]
    save = [ms for v in visits for ms in v.save_ms]
    result = {
        "client": drive.__name__.removeprefix("drive_"),
        "server": "url" if args.url else str(root),
        "visitors": args.visitors,
        "rate_per_s": args.rate,
        "think_s": list(args.think),
        "drawings_per_visitor": args.drawings,
        "served": len(served),
        "errors": dict(Counter(v.error[:120] for v in visits if v.error)),
        "pages_opened": len(opens),
        "page_retries": sum(v.page_retries for v in visits),
        "page_open_s": {k: None if x is None else round(x / 1000, 2) for k, x in percentiles(opens, (50, 95)).items()},
        "stroke_to_prediction_ms": percentiles(predict) | {"n": len(predict)},
        "click_to_saved_ms": percentiles(save, (50, 95)) | {"n": len(save)},
        "shutdown_statuses": dict(Counter(str(v.shutdown_status) for v in visits)),
        "refused_answers": dict(Counter(t[:60] for v in visits for t in v.refused)),
        "frames_sent": sum(v.frames_sent for v in visits),
        "frames_received": sum(v.frames_received for v in visits),
        "wall_s": round(wall, 1),
        "client_cpu_s": None if client_cpu is None else round(client_cpu, 1),
    }
    if args.database_url or not args.url:
        try:
            result |= check_answers(visits, stored_rows(database_url))
        except Exception as e:  # an unreadable store is reported, not fatal: the timings still stand
            result["rows_error"] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
    if monitor:
        per_kernel = monitor.peak_kernels
        result |= {
            "server_idle_rss_mib": round(idle_rss / MIB),
            "peak_rss_total_mib": round(monitor.peak_total / MIB),
            "kernels_at_peak": len(per_kernel),
            "max_kernels": monitor.max_kernels,
            "kernel_rss_mib_mean": round(float(np.mean(per_kernel)) / MIB) if per_kernel else None,
            "kernel_rss_mib_max": round(max(per_kernel) / MIB) if per_kernel else None,
            "peak_pss_total_mib": round(monitor.peak_pss / MIB),
            "kernel_uss_mib_mean": round(float(np.mean(monitor.peak_pss_kernel_uss)) / MIB)
            if monitor.peak_pss_kernel_uss
            else None,
            "server_cpu_s": round(monitor.cpu_total, 1),
            "server_process_cpu_s": round(monitor.own_cpu_total, 1),  # the Voila process alone: every frame
            "server_cpu_per_visitor_s": round(monitor.cpu_total / max(1, len(opens)), 2),
            "kernel_start_cpu_s": round(float(np.median(start_cpu)), 2) if start_cpu else None,
        }
        if monitor.limit_hit_at:  # the server was stopped: its CPU figures are gone with it
            result |= {"server_cpu_s": None, "server_process_cpu_s": None, "server_cpu_per_visitor_s": None}
            t, rss, kernels = monitor.limit_hit_at
            result["stopped_over_rss"] = {
                "after_s": round(t - started, 1),
                "rss_mib": round(rss / MIB),
                "kernels": kernels,
            }
    result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return result


def add_arguments(parser: argparse.ArgumentParser, visitors: int = 50) -> None:
    """The options this benchmark shares with the Chromium check (load_dashboard.py)."""
    parser.add_argument("--visitors", type=int, default=visitors)
    parser.add_argument("--rate", type=float, default=1.0, help="visitors arriving per second")
    parser.add_argument("--think", default="2,3", help="think time range before each drawing, seconds: LO,HI")
    parser.add_argument("--drawings", type=int, default=5, help="digits drawn and answered per visitor")
    parser.add_argument("--url", default=None, help="a running server (default: start Voilà here)")
    parser.add_argument("--server-pid", type=int, default=None, help="with --url: its pid, for RSS and CPU")
    parser.add_argument("--server-root", default=None, help="start Voilà from this tree (e.g. a git worktree)")
    parser.add_argument("--server-env", action="append", default=[], help="KEY=VALUE for the started server")
    parser.add_argument("--database-url", default=None, help="feedback store (default: a temporary SQLite file)")
    parser.add_argument("--drawings-file", default=config.DRAWINGS_FILE.get())
    parser.add_argument("--timeout", type=float, default=60, help="seconds a visitor waits for any one answer")
    parser.add_argument("--sample-s", type=float, default=1.0, help="RSS sampling interval")
    parser.add_argument(
        "--max-rss-gib", type=float, default=12, help="stop the server when its tree's RSS passes this (shared machine)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="one line of JSON")


def check_arguments(parser: argparse.ArgumentParser, args) -> None:
    lo, _, hi = args.think.partition(",")
    args.think = (float(lo), float(hi or lo))
    if args.visitors < 1 or args.rate <= 0 or args.drawings < 1 or args.think[0] > args.think[1]:
        parser.error("need --visitors >= 1, --rate > 0, --drawings >= 1 and --think LO <= HI")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--no-assets", action="store_true", help="skip the page's scripts and styles")
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = run(args)
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
