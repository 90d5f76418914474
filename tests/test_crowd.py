"""The protocol-level crowd benchmark: its wire format, its answer check, and a 10-visitor run.

The frames are checked against jupyter_server's own v1 (de)serialisers, the answer check on
rows that lose or repeat an answer, and the run against a real Voilà over real sockets.
"""

import importlib.util
import json
import os
import subprocess
import sys
import uuid
from types import SimpleNamespace

import pytest
from jupyter_server.services.kernels.connection.base import deserialize_msg_from_ws_v1, serialize_msg_to_ws_v1

from digitlib import config

BENCH = config.PROJ_ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))
import voila_client  # noqa: E402


def load_benchmark(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


crowd = load_benchmark("crowd")
run_all = load_benchmark("run_all")
HEADER = {"msg_id": "m1", "msg_type": "comm_msg", "session": "s", "username": "", "version": "5.2", "date": "d"}
CONTENT = {"comm_id": "c1", "data": {"method": "custom", "content": {"event": "stroke", "points": [1.5, 2, 3, 4]}}}


def test_frames_are_what_jupyter_server_reads_and_writes():
    frame = voila_client.encode_v1("shell", HEADER, {}, {}, CONTENT, [b"\x00\x01"])
    channel, parts = deserialize_msg_from_ws_v1(frame)
    assert channel == "shell"
    assert [json.loads(p) for p in parts[:4]] == [HEADER, {}, {}, CONTENT] and parts[4] == b"\x00\x01"
    sent = serialize_msg_to_ws_v1(
        {"header": HEADER, "parent_header": {}, "metadata": {}, "content": CONTENT},
        "iopub",
        pack=lambda d: json.dumps(d).encode(),
    )
    assert voila_client.decode_v1(sent) == ("iopub", HEADER, {}, {}, CONTENT, [])


def test_a_frame_claiming_absurd_offsets_is_refused_not_allocated():
    with pytest.raises(voila_client.VisitError, match="bad v1 frame"):
        voila_client.decode_v1(bytes.fromhex("ffffff0f00000000") + bytes(8))


def test_a_page_without_the_pad_says_what_it_shows():
    states = {"a": {"model_name": "HTMLModel", "state": {"value": "<h3>The dashboard cannot start</h3>"}}}
    with pytest.raises(voila_client.VisitError, match="digit-pad.*The dashboard cannot start"):
        voila_client.Models.from_states(states)


def visit(*answers):
    return SimpleNamespace(answers_sent=list(answers), saved=list(answers), answers_saved=len(answers))


def rows(session, *answers):
    return [{"session": session, "submission": uuid.uuid4().hex, "label": a[0], "first": [a[1], a[2]]} for a in answers]


def test_answer_check_finds_a_lost_a_repeated_and_a_misfiled_answer():
    a, b, c = (7, 10.0, 20.0), (3, 40.0, 50.0), (1, 5.0, 5.0)
    visits = [visit(a, b), visit(c)]
    assert crowd.check_answers(visits, rows("s1", a, b) + rows("s2", c))["answers_stored_exactly_once"]
    lost = crowd.check_answers(visits, rows("s1", a) + rows("s2", c))
    assert not lost["answers_stored_exactly_once"] and (lost["answers_saved"], lost["rows_stored"]) == (3, 2)
    assert not crowd.check_answers(visits, rows("s1", a, b, b) + rows("s2", c))["answers_stored_exactly_once"]
    assert not crowd.check_answers(visits, rows("s1", a) + rows("s2", b, c))["answers_stored_exactly_once"]
    # a browser's sub-pixel canvas offset still matches; another drawing's first point does not
    assert crowd.check_answers(visits, rows("s1", (7, 10.4, 19.6), b) + rows("s2", c))["answers_stored_exactly_once"]
    assert not crowd.check_answers(visits, rows("s1", (7, 12.0, 20.0), b) + rows("s2", c))[
        "answers_stored_exactly_once"
    ]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'crowd.db'}"
        return
    base = os.environ.get("TEST_DATABASE_URL")
    if not base:
        pytest.skip("TEST_DATABASE_URL not set")
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    schema = f"crowd_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))  # a name made here, not input
    yield make_url(base).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(False)
    with admin.begin() as c:
        c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.mark.slow
def test_ten_visitors_are_all_served_and_every_answer_stored_once(database_url):
    command = [
        sys.executable,
        str(BENCH / "crowd.py"),
        "--visitors",
        "10",
        "--rate",
        "2",
        "--think",
        "0.2,0.5",
        "--drawings",
        "3",
        "--database-url",
        database_url,
        "--json",
    ]
    done = subprocess.run(command, cwd=config.PROJ_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["errors"] == {} and report["served"] == 10
    assert report["answers_sent"] == report["answers_saved"] == report["rows_stored"] == 30
    assert report["distinct_submission_ids"] == 30 and report["answers_stored_exactly_once"]
    strokes = report["stroke_to_prediction_ms"]
    assert strokes["n"] >= 30 and 0 < strokes["p50"] <= strokes["p95"] <= strokes["max"]
    assert report["kernel_rss_mib_mean"] > 0 and report["server_cpu_s"] > 0 and report["kernel_start_cpu_s"] > 0
    [row] = run_all.table_of("crowd", report).rows  # what reports/benchmarks.md shows of this run
    assert row[:3] == ["protocol", 10, "10/10"]


def test_a_simulated_stroke_is_what_the_page_sends():
    points = [
        (10.04, 20.0),
        (10.5, 20.0),
        (300, -4),
        *((10 + 2 * (i % 100), 5 + 2 * (i // 100)) for i in range(12_000)),
    ]
    sent = voila_client.flat(points)
    assert sent[:4] == [10.0, 20.0, 280.0, 0.0]  # clamped, 0.1 px, a point under MIN_STEP away skipped
    assert len(sent) == 2 * voila_client.MAX_STROKE_POINTS  # the page stops growing a stroke there
