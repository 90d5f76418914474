"""Peak memory and time of `digitlib eval-drawings` on a large drawings file (streamed, in batches).

Builds a file of about --mb megabytes by repeating the pen-digits dev set, then runs the CLI on
it as a subprocess and reads the child's peak resident memory. --compare also runs the old
way (every drawing loaded and rendered before predicting) on the same file.

    .venv/bin/python benchmarks/cli_memory.py [--mb 200] [--model models/default] [--compare] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from digitlib import config

OLD_WAY = """
import sys
from digitlib.drawings import evaluate_drawings, load_drawings
from digitlib.modeling.checkpoint import load_model
print(evaluate_drawings(load_model(sys.argv[2]), load_drawings(sys.argv[1])).summary()["n"])
"""


def build_file(path: Path, megabytes: float) -> int:
    """Repeat the recorded drawings until the file holds `megabytes`; returns the number of drawings."""
    lines = Path(config.DRAWINGS_FILE.get()).read_bytes().splitlines(keepends=True)
    target, written, n = megabytes * 1e6, 0, 0
    with path.open("wb") as f:
        while written < target:
            for line in lines:
                f.write(line)
                written += len(line)
                n += 1
                if written >= target:
                    break
    return n


def peak_rss_mb(command: list[str]) -> tuple[float, float, int]:
    """(peak resident MB, seconds, exit status) of one child process."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        sys.stderr.write(child.stderr.read().decode()[-2000:])
    return usage.ru_maxrss / 1024, time.perf_counter() - start, child.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=200, help="size of the drawings file to build")
    parser.add_argument("--model", default=str(config.DEFAULT_MODEL_DIR), help="model directory")
    parser.add_argument("--compare", action="store_true", help="also run the load-everything-first way")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "drawings.jsonl"
        n = build_file(path, args.mb)
        size_mb = path.stat().st_size / 1e6
        cli = [sys.executable, "-m", "digitlib", "eval-drawings", str(path), "--model", args.model, "--json"]
        streamed_mb, streamed_s, status = peak_rss_mb(cli)
        result = {
            "file_mb": round(size_mb, 1),
            "drawings": n,
            "streamed_peak_rss_mb": round(streamed_mb),
            "streamed_seconds": round(streamed_s, 1),
            "streamed_exit": status,
        }
        if args.compare:
            old_mb, old_s, old_status = peak_rss_mb([sys.executable, "-c", OLD_WAY, str(path), args.model])
            result.update(old_peak_rss_mb=round(old_mb), old_seconds=round(old_s, 1), old_exit=old_status)
    for key, value in result.items():
        print(f"{key:>22}: {value}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
