"""Security: what a stranger's browser can and cannot do, and what the dashboard's database role may.

Model files: `torch.load(weights_only=True)` and the recorded SHA-256 are tested in
tests/test_models.py (test_checkpoint_with_pickled_object_is_refused,
test_altered_weights_fail_the_checksum); here we only check those tests are still there.
Hostile widget messages and button spam: tests/test_reliability.py; the submission rate: tests/test_limits.py.
"""

from __future__ import annotations

import ast
import json
import subprocess

import pytest
import yaml
from helpers import make_feedback
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from digitlib import config, migrations
from digitlib.store import FeedbackStore

ROOT = config.PROJ_ROOT
HOSTILE_ID = "x'); DROP TABLE prediction_logs;--"


# --- Voilà and JupyterLab ------------------------------------------------------------------------


def dashboard_commands() -> list[str]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    makefile = (ROOT / "Makefile").read_text()
    voila_lines = [line for line in makefile.splitlines() if "-m voila" in line]
    return [" ".join(compose["services"]["dashboard"]["command"]), *voila_lines]


def test_voila_shows_no_tracebacks_and_no_command_turns_them_on():
    voila = json.loads((ROOT / "voila.json").read_text())
    assert voila["VoilaConfiguration"]["show_tracebacks"] is False
    for command in dashboard_commands():
        assert "show_tracebacks" not in command and "--debug" not in command, command


def test_voila_kernels_accept_only_widget_messages_from_the_browser():
    # Voilà's kernel manager forwards only these message types from the websocket: no
    # execute_request, so a browser cannot run code; checked in the installed Voilà.
    import voila.app

    source = open(voila.app.__file__).read()
    allowed = source.split("allowed_message_types=[", 1)[1].split("]", 1)[0]
    types = {t.strip().strip('"') for t in allowed.split(",") if t.strip()}
    assert types == {
        "comm_open",
        "comm_close",
        "comm_msg",
        "comm_info_request",
        "kernel_info_request",
        "shutdown_request",
    }


def test_the_websocket_guard_lets_through_less_than_voila_and_no_command_replaces_it():
    # digitlib/voila_guard.py (voila.json) checks each frame before Voilà's own type filter;
    # tests/test_voila_guard.py sends hostile frames over a real socket.
    import voila.app

    from digitlib.voila_guard import MESSAGE_TYPES

    source = open(voila.app.__file__).read()
    allowed = source.split("allowed_message_types=[", 1)[1].split("]", 1)[0]
    assert MESSAGE_TYPES < {t.strip().strip('"') for t in allowed.split(",") if t.strip()}
    for command in dashboard_commands():
        for option in ("kernel_websocket_connection_class", "identity_provider_class", "multi_kernel_manager_class"):
            assert option not in command, command


def test_jupyterlab_never_runs_without_a_token():
    lab = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["lab"]
    assert lab["environment"]["JUPYTER_TOKEN"].startswith("${LAB_TOKEN:?")  # compose refuses to start without it
    makefile = (ROOT / "Makefile").read_text()
    lab_recipe = makefile.split("\nlab:", 1)[1].split("\n\n", 1)[0]
    # Without JUPYTER_TOKEN, `make lab` gets a random token from Jupyter; nothing may blank it.
    for disabling in ("token=", "token=''", "password=", "disable_check_xsrf"):
        assert disabling not in lab_recipe


def test_model_loading_safety_is_tested_in_test_models():
    names = {node.name for node in ast.parse((ROOT / "tests/test_models.py").read_text()).body if hasattr(node, "name")}
    assert {"test_checkpoint_with_pickled_object_is_refused", "test_altered_weights_fail_the_checksum"} <= names


# --- SQL -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_hostile_strings_are_stored_as_data(backend, request, tmp_path):
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    store = FeedbackStore(url, queue_file=tmp_path / "q.jsonl")
    feedback = make_feedback(session_id=HOSTILE_ID, submission_id=HOSTILE_ID, model_version="'; DELETE FROM x;--")
    assert store.submit(feedback).status == "saved"
    assert store.submit(make_feedback()).status == "saved"  # the table is still there
    rows = store.rows()
    assert rows[0]["session_id"] == HOSTILE_ID and rows[0]["submission_id"] == HOSTILE_ID
    assert store.submit(feedback).status == "duplicate"  # looked up by value, not by spliced SQL
    assert store.count() == 2
    store.dispose()


def sql_built_from_strings(path) -> list[str]:
    """Functions that pass an f-string or concatenation to sqlalchemy.text()."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef):
            for call in ast.walk(node):
                is_text = isinstance(call, ast.Call) and getattr(call.func, "id", None) == "text"
                if is_text and call.args and not isinstance(call.args[0], ast.Constant):
                    found.append(f"{path.relative_to(ROOT)}:{node.name}")
    return found


def test_sql_is_built_only_from_constants_or_checked_names():
    built = [f for path in (ROOT / "digitlib").rglob("*.py") for f in sql_built_from_strings(path)]
    # GRANT cannot bind a role name: the one exception checks it against a strict pattern.
    assert built == ["digitlib/migrations/__init__.py:grant_to_dashboard"]
    with pytest.raises(ValueError, match="role name"):
        migrations.grant_to_dashboard(create_engine("sqlite://"), 'dash"; DROP TABLE prediction_logs;--')


# --- the dashboard's database role ---------------------------------------------------------------


@pytest.mark.slow  # starts a PostgreSQL server of its own
def test_dashboard_role_may_read_and_add_rows_and_nothing_else(own_postgres, tmp_path):
    """deploy/sql/dashboard-role.sql (as the db container runs it) + `migrate --grant-to`."""
    admin = make_url(own_postgres.url)
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(admin.port), "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1"]
        + ["-v", "role=dashboard", "-v", "password=pw", "-v", "db=postgres", "-q"]
        + ["-f", str(ROOT / "deploy/sql/dashboard-role.sql")],
        check=True,
        capture_output=True,
    )
    owner = create_engine(own_postgres.url)
    migrations.upgrade(owner)
    migrations.grant_to_dashboard(owner, "dashboard")

    dashboard_url = admin.set(username="dashboard").render_as_string(hide_password=False)
    store = FeedbackStore(dashboard_url, queue_file=tmp_path / "q.jsonl")
    assert store.submit(make_feedback(label=3)).status == "saved"  # the schema check passes at head
    assert [r["true_label"] for r in store.rows()] == [3]
    forbidden = [
        "UPDATE prediction_logs SET true_label = 1",
        "DELETE FROM prediction_logs",
        "TRUNCATE prediction_logs",
        "DROP TABLE prediction_logs",
        "CREATE TABLE mine (x int)",
        "UPDATE alembic_version SET version_num = '0001'",
        "ALTER TABLE prediction_logs ADD COLUMN y int",
    ]
    for statement in forbidden:
        with pytest.raises(ProgrammingError, match="permission denied|must be owner"), store.engine.begin() as c:
            c.execute(text(statement))
    with pytest.raises(ProgrammingError):
        migrations.downgrade(store.engine, "0001")  # schema changes are the owner's
    assert store.count() == 1
    store.dispose()
    owner.dispose()
