"""The dashboard on a phone: a 390x844 touch screen, drawn on with touch events (Playwright + CDP).

Before issue 14 the canvas was clipped to its left ~60% on such a screen, the panel did not stack
under it and the digit buttons read "0..", "1..". Here the whole 280x280 drawing area must be on
screen and take ink in its right third, every button must show its whole label and be at least
44 px each way, and a drawing must get a prediction and an answer, stored in the database.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from dashboard_driver import ink_at, wait_for_text
from dashboard_server import CHROMIUM, CHROMIUM_ARGS
from helpers import dashboard_on

from digitlib.dashboard import CSS, TOUCH_PX, label_class
from digitlib.preprocess import CANVAS_SIZE
from digitlib.store import FeedbackStore

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PHONE = {"viewport": {"width": 390, "height": 844}, "has_touch": True, "is_mobile": True, "device_scale_factor": 2}
# A 7 whose bar and stem reach well into the canvas' right third (x > 187).
WIDE_SEVEN = [(30, 40), (265, 40), (120, 265)]
SCRIBBLE = [(20, 30), (260, 250), (260, 30), (20, 250)]
BUTTONS = {
    CSS["undo"]: "Undo",
    CSS["clear"]: "Clear",
    CSS["correct"]: "Correct",
    CSS["not_digit"]: "Not a digit",
    **{label_class(d): str(d) for d in range(10)},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    with dashboard_on(tiny_model_dir, tmp_path_factory.mktemp("phone-db") / "feedback.db") as served:
        yield served


@pytest.fixture(scope="module")
def phone(server):
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make chromium` installs Debian's Chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(**PHONE)
        page = context.new_page()
        page.goto(server[0], timeout=120_000)
        page.locator(f".{CSS['canvas']}").wait_for(state="visible", timeout=60_000)
        yield page
        browser.close()


def touch_stroke(page, points, steps: int = 12) -> None:
    """One finger along `points` (canvas pixels): touchStart, many touchMoves, touchEnd, as a phone sends them."""
    canvas = page.locator(f".{CSS['canvas']}")
    canvas.scroll_into_view_if_needed()  # the answer buttons sit below the fold: back up to the canvas
    session = page.context.new_cdp_session(page)
    box = canvas.bounding_box()
    assert box["y"] >= 0 and box["y"] + box["height"] <= page.viewport_size["height"]  # all of it on screen

    def at(x, y):
        return [{"x": box["x"] + x, "y": box["y"] + y, "id": 1}]

    session.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": at(*points[0])})
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        for i in range(1, steps + 1):
            t = i / steps
            session.send(
                "Input.dispatchTouchEvent",
                {"type": "touchMove", "touchPoints": at(x0 + t * (x1 - x0), y0 + t * (y1 - y0))},
            )
    session.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    session.detach()


def test_the_whole_canvas_is_on_a_phone_screen_and_the_page_stacks(phone):
    width = PHONE["viewport"]["width"]
    box = phone.locator(f".{CSS['canvas']}").bounding_box()
    assert (round(box["width"]), round(box["height"])) == (CANVAS_SIZE, CANVAS_SIZE)
    assert box["x"] >= 0 and box["x"] + box["width"] <= width  # not clipped on the right
    assert phone.evaluate("document.documentElement.scrollWidth") <= width  # no sideways scrolling
    # What a finger on the canvas' right edge touches is the canvas itself, not something over it.
    hit = phone.evaluate(
        "([x, y]) => document.elementFromPoint(x, y).classList.contains('digit-canvas')",
        [box["x"] + box["width"] - 4, box["y"] + box["height"] / 2],
    )
    assert hit
    # The panel stacks under the canvas instead of squeezing it.
    panel = phone.locator(f".{CSS['prediction']}").bounding_box()
    assert panel["y"] >= box["y"] + box["height"]


def test_every_button_shows_its_whole_label_and_is_a_touch_target(phone):
    width = PHONE["viewport"]["width"]
    for css, label in BUTTONS.items():
        button = phone.locator(f".{css}")
        box = button.bounding_box()
        assert box["width"] >= TOUCH_PX and box["height"] >= TOUCH_PX, (css, box)
        assert box["x"] >= 0 and box["x"] + box["width"] <= width, (css, box)
        # Cut-off text ("0..") is an overflow: the label's full width fits its button.
        scroll, client, text = button.evaluate("e => [e.scrollWidth, e.clientWidth, e.innerText.trim()]")
        assert text == label and scroll <= client, (css, scroll, client, text)


def test_touch_drawing_over_the_whole_canvas_predicts_and_answers(phone, server):
    _, database_url = server
    phone.locator(f".{CSS['canvas']}").scroll_into_view_if_needed()
    scrolled = phone.evaluate("() => window.scrollY")
    touch_stroke(phone, WIDE_SEVEN)
    assert phone.evaluate("() => window.scrollY") == scrolled  # touch-action: none: the finger drew, the page stayed
    shown = wait_for_text(phone, f".{CSS['prediction']}", r"^[0-9]$|not a digit")
    assert ink_at(phone, 250, 40)[:3] == [255, 255, 255]  # ink in the right third
    phone.locator(f".{label_class(7)}").tap()  # below the fold: tap scrolls to it, as a thumb would
    assert "Saved as 7" in wait_for_text(phone, f".{CSS['status']}", "Saved")

    touch_stroke(phone, SCRIBBLE)
    wait_for_text(phone, f".{CSS['prediction']}", r"^[0-9]$|not a digit")
    phone.locator(f".{CSS['not_digit']}").tap()
    assert "Saved as not a digit" in wait_for_text(phone, f".{CSS['status']}", "Saved as not")

    store = FeedbackStore(database_url)
    seven, scribble = store.rows()
    store.dispose()
    assert seven["true_label"] == 7 and not seven["not_digit"]
    assert str(seven["predicted"]) == shown or "not a digit" in shown
    xs = [x for x, _ in seven["strokes"][0]]
    assert max(xs) == pytest.approx(265, abs=2) and min(xs) == pytest.approx(30, abs=2)  # all of it arrived
    assert scribble["not_digit"] and scribble["true_label"] is None
    assert max(x for x, _ in scribble["strokes"][0]) == pytest.approx(260, abs=2)


@pytest.fixture(scope="module")
def rejecting_server(tmp_path_factory, tiny_model_dir):
    """The tiny model with its operating point at 0: every drawing is answered "not a digit"."""
    model = tmp_path_factory.mktemp("rejecting") / "model"
    shutil.copytree(tiny_model_dir, model)
    metadata = json.loads((model / "metadata.json").read_text())  # model.onnx, the checked file, is untouched
    metadata["rejection"] = {**(metadata.get("rejection") or {}), "threshold": 0.0}
    (model / "metadata.json").write_text(json.dumps(metadata))
    with dashboard_on(model, tmp_path_factory.mktemp("rejecting-db") / "feedback.db") as served:
        yield served


def test_a_rejected_drawing_reads_not_a_digit_on_a_phone(rejecting_server, phone):
    url, database_url = rejecting_server
    page = phone.context.new_page()
    page.goto(url, timeout=120_000)
    page.locator(f".{CSS['canvas']}").wait_for(state="visible", timeout=60_000)
    touch_stroke(page, WIDE_SEVEN)
    shown = wait_for_text(page, f".{CSS['prediction']}", "not a digit")
    assert shown.startswith("Not a digit") and "best guess" in shown
    headline = page.locator(".digit-rejected").bounding_box()
    assert headline["x"] + headline["width"] <= PHONE["viewport"]["width"]  # the words fit the screen
    page.locator(f".{CSS['correct']}").tap()  # the model was right: it is not a digit
    assert "Saved as not a digit" in wait_for_text(page, f".{CSS['status']}", "Saved")
    page.close()
    store = FeedbackStore(database_url)
    [row] = store.rows()
    store.dispose()
    assert row["not_digit"] and row["rejected"] and row["true_label"] is None
    assert row["not_digit_probability"] is not None
