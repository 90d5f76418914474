"""Prompted drawing ("Draw a 4"): the label comes from the prompt and the row says so.

The handlers are driven directly, as tests/test_dashboard.py does, on SQLite and on the real
PostgreSQL (TEST_DATABASE_URL); then once through Voilà and Chromium with a recorded pen
drawing of the digit asked for.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dashboard_driver import draw
from helpers import SEVEN, UNREACHABLE_URL, dashboard_on, make_feedback, save_untrained_model

from digitlib import config
from digitlib.dashboard import FREE_MODE_TEXT, PROMPTED_MODE_TEXT, Dashboard, PromptPicker
from digitlib.serving import load_onnx_model
from digitlib.store import FeedbackStore


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """Random weights: the label of a prompted drawing is the prompt's, whatever the model says."""
    return load_onnx_model(save_untrained_model(tmp_path_factory.mktemp("untrained") / "model"))


def prompted_digit(dash: Dashboard) -> int:
    text = dash.prompt_label.value
    assert text == f"Draw a <b>{dash.prompt}</b>"
    return dash.prompt


def test_a_simulated_prompted_session_stores_the_prompts_labels_and_their_source(model, store):
    dash = Dashboard(model, store)
    dash.layout()
    assert dash.prompt is None and dash.prompted_answers.layout.display == "none"
    dash.toggle_prompt_mode()
    assert dash.prompt_mode_button.description == PROMPTED_MODE_TEXT
    assert dash.free_answers.layout.display == "none" and dash.prompted_answers.layout.display is None
    assert not dash.answers_enabled  # nothing drawn yet

    asked = []
    for _ in range(3):
        asked.append(prompted_digit(dash))
        draw(dash, SEVEN)  # whatever is drawn, the label is the prompt's
        assert dash.prediction is not None and dash.prediction_label.value  # still predicts live
        assert dash.answers_enabled
        assert dash.submit_prompted() == "saved"
        assert f"Saved as {asked[-1]}" in dash.status.value
    assert len(set(asked)) == 3  # an empty store: each answer moves the session to another digit

    before = prompted_digit(dash)
    draw(dash, SEVEN)
    dash.skip_prompt()
    assert dash.prompt != before and dash.pad.empty and store.count() == 3  # skipped: nothing stored

    dash.toggle_prompt_mode()  # back to free drawing, which stays as it was
    assert dash.prompt is None and dash.prompt_mode_button.description == FREE_MODE_TEXT
    assert dash.submit_prompted() is None
    draw(dash, SEVEN)
    dash.submit(dash.prediction.digit)

    rows = store.rows()
    assert [(r["true_label"], r["label_source"]) for r in rows] == [
        *((digit, "prompt") for digit in asked),
        (rows[-1]["predicted"], "confirmed"),
    ]
    assert {r["session_id"] for r in rows} == {dash.session_id}


def test_prompts_balance_the_classes_then_target_the_models_errors(store):
    # Every digit has two answers except 3 and 8 with one each; the model got only the 8 wrong.
    for digit in range(10):
        predicted = 7 if digit == 8 else digit
        probabilities = [0.9 if d == predicted else 0.1 / 9 for d in range(10)]
        for _ in range(1 if digit in (3, 8) else 2):
            store.submit(make_feedback(label=digit, probabilities=probabilities))
    picker = PromptPicker(store)
    assert picker.next() == 8  # fewest answers; among those, the one the model gets wrong
    picker.record(8)
    assert picker.next() == 3
    picker.record(3)
    assert picker.next(avoid=5) != 5


def test_prompt_counts_are_read_once_per_session(model, store, monkeypatch):
    calls = []
    real = store.label_counts
    monkeypatch.setattr(store, "label_counts", lambda: calls.append(1) or real())
    dash = Dashboard(model, store)
    dash.layout()
    dash.toggle_prompt_mode()
    for _ in range(3):
        draw(dash, SEVEN)
        dash.submit_prompted()
        dash.skip_prompt()
    assert len(calls) == 1 and store.count() == 3


def test_prompts_go_on_while_the_database_is_down_and_the_answer_is_queued(model, tmp_path, store):
    down = FeedbackStore(UNREACHABLE_URL, queue_file=store.queue_file)
    dash = Dashboard(model, down)
    dash.layout()
    dash.toggle_prompt_mode()
    asked = prompted_digit(dash)
    draw(dash, SEVEN)
    assert dash.submit_prompted() == "queued"
    assert dash.prompt is not None
    assert store.flush_queue() == 1  # the database is back
    [row] = store.rows()
    assert (row["true_label"], row["label_source"]) == (asked, "prompt")
    down.dispose()


def test_load_feedback_returns_the_label_source_even_from_before_revision_0004(tmp_path, sqlite_url):
    from digitlib import migrations
    from digitlib.feedback import load_feedback

    store = FeedbackStore(sqlite_url, queue_file=tmp_path / "queue.jsonl")
    store.submit(make_feedback(label=4, label_source="prompt"))
    store.submit(make_feedback(label=7))
    assert load_feedback(sqlite_url)["label_source"].tolist() == ["prompt", "confirmed"]

    store.submit(make_feedback(label=1))
    with store.engine.begin() as c:  # an older database: the prompted row cannot be there
        c.exec_driver_sql("DELETE FROM prediction_logs WHERE label_source = 'prompt'")
    migrations.downgrade(store.engine, "0003")
    store.dispose()
    frame = load_feedback(sqlite_url)
    assert frame["label_source"].tolist() == ["confirmed", "corrected"]  # as the migration backfills


# --- in a browser -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    with dashboard_on(tiny_model_dir, tmp_path_factory.mktemp("prompted-db") / "feedback.db") as served:
        yield served


@pytest.mark.slow
@pytest.mark.browser
def test_prompted_drawing_in_the_browser(server):
    from dashboard_driver import draw_in_page, wait_for_text
    from dashboard_server import CHROMIUM, CHROMIUM_ARGS
    from playwright.sync_api import sync_playwright

    from digitlib.drawings import load_drawings

    pen = Path(config.DRAWINGS_FILE.get())
    if not pen.is_file():
        pytest.fail(f"{pen} is missing: the pen-digit dev set (../shared/data/README.md)")
    by_label = {}
    for d in load_drawings(pen):
        by_label.setdefault(d.label, d)
    url, database_url = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1000, "height": 800})
        page.goto(url, timeout=120_000)
        page.locator(".digit-canvas").wait_for(state="visible", timeout=60_000)
        assert not page.locator(".digit-done").is_visible()  # free drawing first, as before
        page.locator(".digit-prompt-mode").click()
        asked = int(wait_for_text(page, ".digit-prompt", r"^Draw a [0-9]$")[-1])

        draw_in_page(page, by_label[asked].strokes)
        wait_for_text(page, ".digit-prediction", r"^([0-9]|Not a digit)")  # the live prediction
        page.locator(".digit-skip").click()
        wait_for_text(page, ".digit-status", "Skipped")
        asked = int(wait_for_text(page, ".digit-prompt", r"^Draw a [0-9]$")[-1])

        draw_in_page(page, by_label[asked].strokes)
        wait_for_text(page, ".digit-prediction", r"^([0-9]|Not a digit)")
        page.locator(".digit-done").click()
        assert f"Saved as {asked}" in wait_for_text(page, ".digit-status", "Saved")
        browser.close()

    store = FeedbackStore(database_url)
    [row] = store.rows()  # the skipped drawing stored nothing
    assert (row["true_label"], row["label_source"]) == (asked, "prompt")
    assert len(row["strokes"]) == len(by_label[asked].strokes)
    store.dispose()
