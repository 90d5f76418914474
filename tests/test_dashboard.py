"""The dashboard's logic without a browser: the pad's messages are sent as the page sends them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from dashboard_driver import draw, stroke_message
from helpers import SEVEN, save_untrained_model

from digitlib import config
from digitlib.dashboard import PROMPT, Dashboard, DrawingPad, build_dashboard, label_class, predict_strokes
from digitlib.preprocess import MAX_POINTS, MAX_STROKES, strokes_to_input
from digitlib.serving import load_onnx_model
from digitlib.store import FeedbackStore, png_to_image

ONE_STROKE_PLUS = [[(140, 40), (140, 240)], [(80, 140), (200, 140)]]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """What the dashboard serves (ONNX); random weights: these tests are about the page, not accuracy."""
    return load_onnx_model(save_untrained_model(tmp_path_factory.mktemp("untrained") / "model"))


@pytest.fixture
def store(tmp_path):
    s = FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}", queue_file=tmp_path / "queue.jsonl")
    yield s
    s.dispose()


@pytest.fixture
def dash(model, store):
    return Dashboard(model, store)


@pytest.fixture
def sent(dash, monkeypatch):
    """The messages the kernel sends to the page's pad."""
    messages = []
    monkeypatch.setattr(dash.canvas, "send", lambda content, buffers=None: messages.append(content))
    return messages


class Rejecting:
    """The served model with a not-digit output and an operating point: says `not_digit` for every drawing.

    Its digit probabilities are the real model's, scaled as calibration would change them, so
    the test can tell calibrated values from raw ones.
    """

    rejection_threshold = 0.5

    def __init__(self, model, not_digit: float):
        self.model, self.not_digit, self.version = model, not_digit, "rejecting-1"

    def predict(self, images):
        probabilities = self.model.predict_proba(images) ** 0.5  # "calibrated": flatter than the raw ones
        probabilities /= probabilities.sum(1, keepdims=True)
        return probabilities, np.full(len(images), self.not_digit, np.float32)

    def is_not_digit(self, not_digit):
        return np.asarray(not_digit) >= self.rejection_threshold


# --- DrawingPad ---------------------------------------------------------------------------


def test_pad_records_strokes_clamped_to_the_canvas_without_needless_points():
    pad = DrawingPad(280)
    assert pad.add_stroke([(10, 20), (300, -5), (300.4, -5), (20, 20)]) == ""
    assert pad.strokes == [[(10.0, 20.0), (280.0, 0.0), (20.0, 20.0)]]  # under a pixel away: nothing new
    assert pad.add_stroke([(5, 5)]) == "" and pad.strokes[-1] == [(5.0, 5.0)]  # a dot


@pytest.mark.parametrize("garbage", [("x", 3), (float("nan"), 3), (None, 2), (float("inf"), 2), (10**400, 1)])
def test_pad_refuses_a_stroke_with_garbage_and_keeps_the_drawing(garbage):
    pad = DrawingPad()
    pad.add_stroke([(1, 1), (9, 9)])
    assert "could not be read" in pad.add_stroke([(1, 1), garbage, (5, 5)])
    assert pad.strokes == [[(1.0, 1.0), (9.0, 9.0)]]


def test_pad_caps_strokes_and_points():
    pad = DrawingPad()
    for i in range(MAX_STROKES):
        assert pad.add_stroke([(i, i)]) == ""
    assert "enough ink" in pad.add_stroke([(1, 1)])
    assert len(pad.strokes) == MAX_STROKES
    pad.clear()
    pad.add_stroke([(i % 280, (i // 280) * 2) for i in range(MAX_POINTS + 10)])
    assert pad.points == MAX_POINTS
    assert "enough ink" in pad.add_stroke([(1, 1)])
    strokes_to_input(pad.as_lists())  # still a drawing the preprocessing accepts


def test_pad_undo_clear_and_drawing_ids():
    pad = DrawingPad()
    first_id = pad.drawing_id
    pad.add_stroke([(1, 1)]), pad.add_stroke([(5, 5)])
    assert pad.undo() and len(pad.strokes) == 1 and pad.drawing_id == first_id
    assert pad.undo() and pad.empty and pad.drawing_id != first_id  # empty again: a new drawing
    assert not pad.undo()
    pad.add_stroke([(1, 1)])
    before = pad.drawing_id
    pad.clear()
    assert pad.empty and pad.drawing_id != before


# --- prediction ---------------------------------------------------------------------------


def test_empty_canvas_shows_a_prompt_not_a_guess(dash):
    assert dash.prediction is None
    assert PROMPT in dash.prediction_label.value
    assert dash.preview_image.shape == (28, 28) and not dash.preview_image.any()  # a black square
    assert not dash.answers_enabled and "digit-answers-off" in dash.root._dom_classes
    assert dash.model.version in dash.version_label.value


def test_prediction_after_every_stroke_uses_the_one_preprocessing_path(dash, model):
    draw(dash, ONE_STROKE_PLUS[:1])
    first = dash.prediction
    assert first is not None
    draw(dash, ONE_STROKE_PLUS[1:])
    second = dash.prediction
    strokes = dash.pad.as_lists()
    probabilities, not_digit = model.predict(strokes_to_input(strokes)[None])
    expected, rejected = probabilities[0], bool(model.is_not_digit(not_digit)[0])
    assert np.array_equal(second.image, strokes_to_input(strokes))
    assert second.probabilities == pytest.approx(expected.tolist())
    # The untrained model has no not-digit output (the Rejecting wrapper below has one): NULL, not a made-up 0.
    has_not_digit = getattr(model, "rejection_threshold", None) is not None
    assert second.not_digit == (pytest.approx(float(not_digit[0])) if has_not_digit else None)
    assert second.rejected == rejected
    assert first.image.sum() != second.image.sum()  # the second stroke changed what the model saw
    if rejected:  # the tiny model has a not-digit output too; its answer depends on its training
        assert "Not a digit" in dash.prediction_label.value
    else:
        assert dash.prediction_label.value == str(int(expected.argmax()))
        assert f"{expected.max():.0%}" in dash.confidence_label.value
    assert np.array_equal(dash.preview_image, second.image)  # what the model saw, pixel for pixel
    assert dash.bars.value.count('class="row') == 10 and dash.bars.value.count('class="row top"') == 1
    assert dash.answers_enabled and "digit-answers-off" not in dash.root._dom_classes


@pytest.mark.parametrize(
    "points",
    [
        None,
        [],
        "140,40,140,240",
        [140, 40, 140],  # odd: not pairs
        [140, 40, "x", 240],
        [[140, 40], [140, 240]],  # nested pairs are not the page's form
        {"x": 1},
    ],
)
def test_a_malformed_stroke_message_is_refused_and_the_page_shown_the_drawing_as_it_was(dash, sent, points):
    draw(dash, SEVEN)
    before, predicted = dash.prediction, dash.canvas.predicted
    dash.on_pad_message(dash.canvas, {"event": "stroke", "points": points}, [])
    assert dash.pad.strokes[0][0] == tuple(SEVEN[0][0]) and len(dash.pad.strokes) == 1
    assert dash.prediction is before and dash.canvas.predicted == predicted
    assert "could not be read" in dash.status.value
    assert sent[-1] == {"event": "strokes", "strokes": [stroke_message(SEVEN[0])["points"]]}
    assert dash.answers_enabled  # the drawing and its answer stay usable


def test_unknown_pad_messages_change_nothing(dash, sent):
    for content in ({"event": "mouse_move", "x": 1, "y": 2}, {"event": None}, ["stroke"], "stroke", None):
        dash.on_pad_message(dash.canvas, content, [])
    assert dash.pad.empty and dash.prediction is None and sent == [] and dash.status.value == ""


def test_every_prediction_counts_up_last_and_a_reconnecting_page_gets_the_drawing(dash, sent):
    counts = []
    dash.canvas.observe(lambda change: counts.append((change["new"], dash.prediction is not None)), "predicted")
    draw(dash, ONE_STROKE_PLUS)
    assert counts == [(1, True), (2, True)]  # the prediction was shown before the count changed
    dash.on_pad_message(dash.canvas, {"event": "client_ready"}, [])
    assert len(sent[-1]["strokes"]) == 2 and sent[-1]["strokes"][0][:2] == [140.0, 40.0]


def test_too_much_ink_is_refused_with_the_page_redrawn(dash, sent):
    for i in range(MAX_STROKES):
        dash.add_stroke([i, i])
    dash.add_stroke([1, 1, 2, 2])
    assert len(dash.pad.strokes) == MAX_STROKES and "enough ink" in dash.status.value
    assert len(sent[-1]["strokes"]) == MAX_STROKES


def test_undo_and_clear_update_the_prediction(dash):
    draw(dash, ONE_STROKE_PLUS)
    dash.undo()
    assert len(dash.pad.strokes) == 1
    assert np.array_equal(dash.prediction.image, strokes_to_input(dash.pad.as_lists()))
    dash.clear()
    assert dash.pad.empty and dash.prediction is None and PROMPT in dash.prediction_label.value


def test_predict_strokes_matches_the_drawings_evaluator(model):
    from digitlib.drawings import Drawing, drawings_to_digits

    strokes = [[list(p) for p in s] for s in SEVEN]
    digits = drawings_to_digits([Drawing(strokes, 7)])
    assert np.array_equal(predict_strokes(model, strokes).image, digits.images[0].numpy())


# --- feedback -----------------------------------------------------------------------------


def test_label_button_stores_one_row_confirms_and_clears(dash, store):
    draw(dash, SEVEN)
    predicted, strokes = dash.prediction, dash.pad.as_lists()
    dash.label_buttons[7].click()
    [row] = store.rows()
    assert row["true_label"] == 7 and row["predicted"] == predicted.digit
    assert row["probabilities"] == pytest.approx(predicted.probabilities)
    assert np.array_equal(png_to_image(row["image"]), predicted.image)
    assert np.allclose(np.concatenate(row["strokes"]), np.concatenate(strokes), atol=0.01)
    assert row["session_id"] == dash.session_id and row["model_version"] == dash.model.version
    assert "Saved as 7" in dash.status.value
    assert dash.pad.empty and PROMPT in dash.prediction_label.value


def test_correct_button_stores_the_prediction_as_the_label(model, store):
    dash = Dashboard(Rejecting(model, not_digit=0.1), store)  # answers a digit
    draw(dash, SEVEN)
    guess = dash.prediction.digit
    dash.correct_button.click()
    assert [(r["true_label"], r["not_digit"]) for r in store.rows()] == [(guess, False)]


def test_double_clicks_store_one_row(dash, store):
    draw(dash, SEVEN)
    drawing_id = dash.pad.drawing_id
    dash.label_buttons[7].click()
    dash.label_buttons[7].click()
    dash.correct_button.click()
    assert store.count() == 1
    assert store.rows()[0]["submission_id"] == drawing_id
    assert "Draw a digit first" in dash.status.value


def test_submit_on_an_empty_canvas_stores_nothing(dash, store):
    assert dash.submit(3) is None
    assert store.count() == 0 and "Draw a digit first" in dash.status.value


def test_bad_label_from_the_browser_is_refused_and_the_drawing_kept(dash, store):
    draw(dash, SEVEN)
    assert dash.submit(11) is None
    assert "Not saved" in dash.status.value and "0-9" in dash.status.value
    assert store.count() == 0 and not dash.pad.empty and dash.answers_enabled


def test_unreachable_database_tells_the_visitor_it_is_queued(model, tmp_path):
    queue = tmp_path / "queue.jsonl"
    dash = Dashboard(model, FeedbackStore("postgresql+psycopg2://postgres@127.0.0.1:1/x", queue_file=queue))
    draw(dash, SEVEN)
    assert dash.submit(7) == "queued"
    assert "unreachable" in dash.status.value and "saved when it is back" in dash.status.value
    assert json.loads(queue.read_text())["true_label"] == 7
    assert dash.pad.empty


def test_handler_errors_become_a_status_line_not_a_traceback(dash, monkeypatch):
    def broken(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(dash.store, "submit", broken)
    draw(dash, SEVEN)
    dash.label_buttons[2].click()
    assert "Something went wrong" in dash.status.value and "boom" not in dash.status.value


def test_widgets_carry_the_css_hooks(dash):
    page = dash.layout()
    classes = {c for w in _walk(page) for c in getattr(w, "_dom_classes", ())}
    expected = {"digit-pad", "digit-prediction", "digit-correct", "digit-clear", "digit-undo", "digit-status"}
    expected |= {"digit-not-digit"}
    assert expected | {label_class(d) for d in range(10)} <= classes
    assert dash.canvas.canvas_class == "digit-canvas"  # the page puts it on the <canvas> itself
    assert dash.canvas.size == 280
    assert dash.canvas.layout.width == dash.canvas.layout.height == "280px"


def _walk(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from _walk(child)


def test_build_dashboard_uses_the_settings(monkeypatch, tmp_path, model):
    monkeypatch.setenv(config.MODEL_DIR.name, str(model.path))
    monkeypatch.setenv(config.DATABASE_URL.name, f"sqlite:///{tmp_path / 'd.db'}")
    page = build_dashboard()
    assert any("digit-pad" in getattr(w, "_dom_classes", ()) for w in _walk(page))


def test_build_dashboard_without_a_model_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv(config.MODEL_DIR.name, str(tmp_path / "missing"))
    page = build_dashboard()
    assert "cannot start" in page.value and "no model at" in page.value


def test_build_dashboard_without_model_onnx_names_the_command(monkeypatch, tmp_path, model):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(model.path, bare)
    (bare / "model.onnx").unlink()
    monkeypatch.setenv(config.MODEL_DIR.name, str(bare))
    page = build_dashboard()
    assert "cannot start" in page.value and "digitlib export-onnx --model" in page.value


def test_build_dashboard_with_corrupt_metadata_names_the_file(monkeypatch, tmp_path, model):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model.path, broken)
    (broken / "metadata.json").write_text('{"version": ')
    monkeypatch.setenv(config.MODEL_DIR.name, str(broken))
    page = build_dashboard()  # a message in the page, not Voila's generic cell error
    assert "cannot start" in page.value and str(broken / "metadata.json") in page.value


# --- "not a digit" -------------------------------------------------------------------------


@pytest.fixture
def rejecting(model, store):
    return Dashboard(Rejecting(model, not_digit=0.87), store)


def test_a_rejected_drawing_shows_not_a_digit_with_the_best_guess_in_small_print(rejecting):
    draw(rejecting, SEVEN)
    p = rejecting.prediction
    assert p.rejected and p.not_digit == pytest.approx(0.87)
    shown = rejecting.prediction_label.value
    assert 'class="digit-rejected">Not a digit<' in shown and "not a digit" in shown
    assert f'class="digit-best-guess">87% sure this is not a digit; best guess {p.digit} ({p.confidence:.0%})' in shown
    assert rejecting.confidence_label.value == ""  # no big "NN% sure" for a digit it does not believe in
    # The bars are the calibrated probabilities predict returned, not the raw softmax.
    expected = Rejecting(rejecting.model.model, 0.87).predict(strokes_to_input(rejecting.pad.as_lists())[None])[0][0]
    assert p.probabilities == pytest.approx(expected.tolist())
    assert f"{expected.max():6.1%}" in rejecting.bars.value


def test_correct_on_a_rejection_stores_not_a_digit_as_made(rejecting, store):
    draw(rejecting, SEVEN)
    guess = rejecting.prediction.digit
    rejecting.correct_button.click()
    [row] = store.rows()
    assert row["not_digit"] is True and row["true_label"] is None
    assert row["rejected"] is True and row["not_digit_probability"] == pytest.approx(0.87)
    assert row["predicted"] == guess and row["model_version"] == "rejecting-1"
    assert "Saved as not a digit" in rejecting.status.value


def test_a_digit_answer_to_a_rejection_keeps_the_rejection_on_record(rejecting, store):
    draw(rejecting, SEVEN)
    rejecting.label_buttons[7].click()
    [row] = store.rows()
    assert row["true_label"] == 7 and row["not_digit"] is False and row["rejected"] is True


def test_not_a_digit_button_stores_a_negative_once(model, store):
    dash = Dashboard(Rejecting(model, not_digit=0.1), store)  # below the threshold: a digit is shown
    draw(dash, SEVEN)
    assert not dash.prediction.rejected and dash.prediction_label.value == str(dash.prediction.digit)
    dash.not_digit_button.click()
    assert "Saved as not a digit" in dash.status.value and dash.pad.empty
    assert not dash.answers_enabled
    dash.not_digit_button.click()  # a double tap that got through anyway
    [row] = store.rows()
    assert row["not_digit"] is True and row["true_label"] is None
    assert row["rejected"] is False and row["not_digit_probability"] == pytest.approx(0.1)


class TenOutputs(Rejecting):
    """A model exported before "not a digit": serving gives zeros and no operating point."""

    rejection_threshold = None

    def __init__(self, model):
        super().__init__(model, not_digit=0.0)

    def is_not_digit(self, not_digit):
        return np.zeros(np.shape(not_digit), bool)


def test_a_model_without_a_not_digit_output_never_rejects_and_stores_null(model, store):
    dash = Dashboard(TenOutputs(model), store)
    draw(dash, SEVEN)
    assert not dash.prediction.rejected and dash.prediction.not_digit is None
    dash.not_digit_button.click()
    [row] = store.rows()
    assert row["not_digit"] is True and row["rejected"] is False and row["not_digit_probability"] is None


def test_the_preview_is_drawn_once_a_page_shows_it_and_again_for_a_reconnected_page(dash, monkeypatch):
    """ipycanvas says which canvas it draws on only when that changes: a page that connects later
    (or again) must hear it, or the model input is never drawn there."""
    import ipycanvas.canvas

    sent = []
    monkeypatch.setattr(ipycanvas.canvas._CANVAS_MANAGER, "_send_custom", lambda c, buffers=(): sent.append(c))
    draw(dash, SEVEN)
    assert sent == []  # no page yet: nothing to lose
    for _ in range(2):  # the page, then the same page reloaded
        dash.on_preview_ready()
        [commands] = sent[-1:]
        assert [c[0] for c in commands][:1] == [ipycanvas.canvas.COMMANDS["switchCanvas"]] and len(commands) == 2
    sent.clear()
    draw(dash, SEVEN)
    assert len(sent) == 1  # later predictions: the pixels only
