"""The drawing dashboard: draw a digit, see the model's guess at once, tell it the truth.

`DrawingPad` holds the strokes (no widgets); `Dashboard` wires a StrokePad (the page draws the
ink and sends each finished stroke once, digitlib.stroke_pad) and a few ipywidgets to it,
predicts after every stroke through preprocess.strokes_to_input (the one path to the model's
input) and stores answers with store.FeedbackStore. The handlers are plain methods, so tests
drive them without a browser. The Voilà notebook
(dashboards/digits.ipynb) only calls `build_dashboard()` and displays it.

Besides free drawing there is prompted drawing ("Draw a 4", as Quick, Draw! and UNIPEN
collected theirs): the answer's label is the prompt's, stored with label_source "prompt";
`PromptPicker` chooses the digits.

Every visitor gets a kernel that imports this module, so it imports no torch: the model is
the version's model.onnx run by ONNX Runtime (digitlib.serving).
"""

from __future__ import annotations

import functools
import html
import logging
import math
import uuid
from dataclasses import dataclass

import ipywidgets as widgets
import numpy as np
from ipycanvas import Canvas, hold_canvas
from ipycanvas.canvas import _CANVAS_MANAGER

from digitlib.limits import TokenBucket, submission_limit
from digitlib.preprocess import (
    CANVAS_SIZE,
    DEFAULT_BRUSH,
    MAX_POINTS,
    MAX_STROKES,
    MNIST_SIZE,
    Brush,
    DrawingError,
    strokes_to_input,
)
from digitlib.registry import LiveModel
from digitlib.serving import CheckpointError, OnnxModel, load_onnx_model
from digitlib.store import NOT_A_DIGIT, FeedbackError, FeedbackStore, StoreConfigError
from digitlib.stroke_pad import StrokePad, unflatten

log = logging.getLogger(__name__)

PROMPT = "Draw a digit"
PROMPT_HTML = f'<span style="font-size: 28px; font-weight: 400">{PROMPT}</span>'
MIN_STEP = 1.0  # canvas px: closer pointer moves add no information, only points
PREVIEW_PX = 112  # the 28x28 model input shown 4x, pixel for pixel
BLANK_INPUT = np.zeros((MNIST_SIZE, MNIST_SIZE), np.uint8)

# Stable hooks for browser tests (listed in the README).
CSS = {
    "canvas": "digit-canvas",  # the <canvas> element itself
    "pad": "digit-pad",  # the drawing pad widget around it (its model carries this class)
    "prediction": "digit-prediction",
    "correct": "digit-correct",
    "clear": "digit-clear",
    "undo": "digit-undo",
    "status": "digit-status",
    "not_digit": "digit-not-digit",
    "prompt_mode": "digit-prompt-mode",  # switches between free and prompted drawing
    "prompt": "digit-prompt",  # "Draw a 4": contains the digit asked for
    "done": "digit-done",  # store the drawing under the prompt's label
    "skip": "digit-skip",  # another prompt, nothing stored
    "answers_off": "digit-answers-off",  # on the dashboard while there is nothing to answer
}
ROOT_CLASS = "digit-dashboard"
# The buttons that answer a drawing: off (greyed, aria-disabled) while there is nothing to answer.
ANSWER_BUTTONS = f".digit-answers .jupyter-button, .{CSS['correct']}, .{CSS['done']}"
FREE_MODE_TEXT, PROMPTED_MODE_TEXT = "Draw what I ask", "Draw freely"
TOUCH_PX = 44  # smallest comfortable touch target (Apple HIG, WCAG 2.5.5)
STYLE = f"""<style>
.digit-dashboard .digit-prediction, .digit-dashboard .digit-prediction .widget-html-content {{
  font-size: 96px; line-height: 100px; height: 100px; font-weight: 700; min-width: 90px; }}
.digit-dashboard .digit-rejected {{ display: block; font-size: 40px; line-height: 48px; white-space: nowrap; }}
.digit-dashboard .digit-best-guess {{ display: block; font-size: 13px; line-height: 17px; font-weight: 400;
  white-space: normal; max-width: 320px; color: #555; }}
.digit-dashboard .digit-status .widget-html-content {{ font-size: 16px; }}
.digit-dashboard .digit-preview {{ image-rendering: pixelated; border: 1px solid #888; }}
.digit-dashboard canvas.digit-canvas {{ touch-action: none; cursor: crosshair; border: 1px solid #444;
  box-sizing: border-box; width: {CANVAS_SIZE}px; height: {CANVAS_SIZE}px; flex: none; display: block; }}
/* Rows wrap instead of squeezing: on a phone the panel goes under the canvas, buttons keep their labels. */
.digit-dashboard .digit-row {{ flex-wrap: wrap; gap: 8px 24px; align-items: flex-start; }}
.digit-dashboard .digit-answers, .digit-dashboard .digit-buttons {{ flex-wrap: wrap; gap: 4px; align-items: center; }}
.digit-dashboard .digit-drawing {{ flex: none; min-width: {CANVAS_SIZE + 2}px; }}
.digit-dashboard .digit-answers .jupyter-button, .digit-dashboard .digit-buttons .jupyter-button {{
  min-width: {TOUCH_PX}px; height: {TOUCH_PX}px; flex: none; margin: 0; padding: 0 10px;
  overflow: visible; text-overflow: clip; }}
@media (max-width: 640px) {{
  .digit-dashboard .digit-prediction, .digit-dashboard .digit-prediction .widget-html-content {{
    font-size: 72px; line-height: 80px; height: 88px; }}
  .digit-dashboard .digit-answers .jupyter-button {{ min-width: 52px; }}
}}
/* Nothing to answer (no drawing, or it is saved): the answer buttons are off. One class on the dashboard,
   one message, instead of 13 buttons' `disabled` each; the page marks them aria-disabled (the pad's
   off_switch) and a click that still arrives (keyboard) is refused by the kernel (Dashboard.submit). */
.{ROOT_CLASS}.{CSS["answers_off"]} :is({ANSWER_BUTTONS}) {{ pointer-events: none; opacity: 0.4; cursor: default; }}
.digit-dashboard .digit-prompt .widget-html-content {{ font-size: 28px; line-height: 44px; }}
.digit-bars {{ font: 13px monospace; }}
.digit-bars .row {{ display: flex; align-items: center; gap: 6px; height: 18px; }}
.digit-bars .bar {{ background: #9ab; height: 12px; }}
.digit-bars .top .bar {{ background: #2a7; }}
</style>"""


def version_html(version: str) -> str:
    return f"model <code>{html.escape(version)}</code>"


def label_class(digit: int) -> str:
    return f"digit-label-{digit}"


class DrawingPad:
    """A drawing in progress: strokes of (x, y) canvas points, with undo and clear.

    Each drawing gets a fresh id; it becomes the submission id, so one drawing can be stored
    only once however many times its buttons are pressed.
    """

    def __init__(self, size: int = CANVAS_SIZE):
        self.size = size
        self.strokes: list[list[tuple[float, float]]] = []
        self.drawing_id = uuid.uuid4().hex

    @property
    def empty(self) -> bool:
        return not self.strokes

    @property
    def points(self) -> int:
        return sum(len(s) for s in self.strokes)

    def _point(self, x, y) -> tuple[float, float] | None:
        """Browser coordinates -> a point on the canvas, or None for garbage."""
        try:
            x, y = float(x), float(y)
        except (TypeError, ValueError, OverflowError):  # OverflowError: a 400-digit integer
            return None
        if not (math.isfinite(x) and math.isfinite(y)):
            return None
        # A stroke that leaves the canvas continues along its edge, as the visitor sees it.
        return min(max(x, 0.0), self.size), min(max(y, 0.0), self.size)

    def add_stroke(self, points) -> str:
        """Add a finished stroke of (x, y) points; returns "" or why it was refused (nothing changed then)."""
        if len(self.strokes) >= MAX_STROKES or self.points >= MAX_POINTS:
            return f"That is enough ink for one digit (at most {MAX_STROKES} strokes)."
        stroke: list[tuple[float, float]] = []
        for x, y in points:
            point = self._point(x, y)
            if point is None:
                return "That stroke could not be read, so it was not added. Please draw it again."
            if not stroke or math.dist(stroke[-1], point) >= MIN_STEP:
                stroke.append(point)
        self.strokes.append(stroke[: MAX_POINTS - self.points])
        return ""

    def undo(self) -> bool:
        if not self.strokes:
            return False
        self.strokes.pop()
        if not self.strokes:
            self.drawing_id = uuid.uuid4().hex
        return True

    def clear(self) -> None:
        self.strokes = []
        self.drawing_id = uuid.uuid4().hex

    def as_lists(self) -> list[list[list[float]]]:
        return [[list(p) for p in stroke] for stroke in self.strokes]


@dataclass(frozen=True)
class Prediction:
    probabilities: list[float]  # calibrated over the ten digits
    image: np.ndarray  # the uint8 28x28 input the model saw
    model_version: str = ""  # the model that made it: the stored row names this one
    not_digit: float | None = None  # probability it is no digit; None: the model has no such output
    rejected: bool = False  # the model's answer is "not a digit" (at its recorded operating point)

    @property
    def digit(self) -> int:
        return int(np.argmax(self.probabilities))

    @property
    def confidence(self) -> float:
        return self.probabilities[self.digit]


def predict_strokes(model: OnnxModel, strokes, brush: Brush = DEFAULT_BRUSH) -> Prediction:
    """Strokes on the canvas -> the model's calibrated answer, through the one preprocessing path.

    `model` is anything with serving's `predict` (probabilities, not_digit) and `is_not_digit`
    and a version: the ONNX model here, a torch LoadedModel in evaluations.
    """
    image = strokes_to_input(strokes, brush)
    probabilities, not_digit = model.predict(image[None])
    not_digit = float(np.asarray(not_digit).reshape(-1)[0])
    rejected = bool(np.asarray(model.is_not_digit(np.asarray([not_digit]))).reshape(-1)[0])
    # A model without a not-digit output predicts zeros and never rejects: store NULL, not a made-up 0.
    has_output = getattr(model, "rejection_threshold", None) is not None or not_digit > 0
    return Prediction(
        [float(p) for p in np.asarray(probabilities)[0]],
        image,
        model.version,
        not_digit if has_output else None,
        rejected,
    )


def prediction_html(p: Prediction) -> str:
    """The big answer: the digit, or "Not a digit" with the best guess in small print."""
    if not p.rejected:
        return str(p.digit)
    return (
        '<span class="digit-rejected">Not a digit</span>'
        f'<span class="digit-best-guess">{p.not_digit:.0%} sure this is not a digit; '
        f"best guess {p.digit} ({p.confidence:.0%})</span>"
    )


def bars_html(probabilities: list[float] | None) -> str:
    """Ten horizontal bars as one HTML string: one widget update per prediction, not ten."""
    top = int(np.argmax(probabilities)) if probabilities else -1
    rows = []
    for digit in range(10):
        p = probabilities[digit] if probabilities else 0.0
        css = "row top" if digit == top else "row"
        rows.append(
            f'<div class="{css}"><span>{digit}</span>'
            f'<div class="bar" style="width:{p * 150:.0f}px"></div><span>{p:6.1%}</span></div>'
        )
    return f'<div class="digit-bars">{"".join(rows)}</div>'


def prompt_html(digit: int) -> str:
    return f"Draw a <b>{digit}</b>"


class PromptPicker:
    """Which digit to ask for next: the one with the fewest stored answers (balancing the classes),
    among those the one the model gets wrong most often, then at random.

    The counts come from one grouped query (store.label_counts) the first time a prompt is
    needed, then follow this session's own answers: a visitor never waits on the database
    again. A database that is down counts as empty: every digit equal, asked at random.
    """

    def __init__(self, store: FeedbackStore, rng: np.random.Generator | None = None):
        self.store, self.rng = store, rng or np.random.default_rng()
        self._counts: dict[int, list[int]] | None = None  # digit -> [answers, model wrong]

    def counts(self) -> dict[int, list[int]]:
        if self._counts is None:
            try:
                stored = self.store.label_counts()
            except Exception as e:  # noqa: BLE001 - prompts go on without the database
                log.warning("prompt counts unavailable (%s): prompting at random", e)
                stored = {}
            self._counts = {d: list(stored.get(d, (0, 0))) for d in range(10)}
        return self._counts

    def record(self, digit: int) -> None:
        """One more answer for `digit` in this session."""
        self.counts()[digit][0] += 1

    def next(self, avoid: int | None = None) -> int:
        counts = self.counts()
        candidates = [d for d in range(10) if d != avoid]
        fewest = min(counts[d][0] for d in candidates)
        tied = [d for d in candidates if counts[d][0] == fewest]

        def error_rate(d: int) -> float:  # with a prior of one right, one wrong: no answers -> 0.5
            answers, wrong = counts[d]
            return (wrong + 1) / (answers + 2)

        worst = max(error_rate(d) for d in tied)
        return int(self.rng.choice([d for d in tied if error_rate(d) == worst]))


def _guarded(method):
    """Widget callbacks never show a traceback: log it, tell the visitor in one line."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception:
            log.exception("dashboard: %s failed", method.__name__)
            self.show_status("Something went wrong. Clear the canvas and try again.", error=True)

    return wrapper


class Dashboard:
    """The widgets and their handlers around one DrawingPad, one model and one store."""

    def __init__(
        self,
        model: OnnxModel | LiveModel,
        store: FeedbackStore,
        brush: Brush = DEFAULT_BRUSH,
        submit_limit: TokenBucket | None = None,
    ):
        self.model_source, self.store, self.brush = model, store, brush
        self.submit_limit = submit_limit or submission_limit()  # per session: one visitor cannot flood the store
        self.session_id = uuid.uuid4().hex
        self.pad = DrawingPad()
        self.prediction: Prediction | None = None
        self.saved_ids: set[str] = set()
        self.prompts = PromptPicker(store)
        self.prompt: int | None = None  # the digit asked for; None: free drawing
        self._build_widgets()
        self._connect()
        self._show_prediction()

    @property
    def model(self) -> OnnxModel:
        """The model to predict with now: a LiveModel follows promotions and rollbacks (hot swap)."""
        if isinstance(self.model_source, LiveModel):
            return self.model_source.get()
        return self.model_source

    # --- widgets ------------------------------------------------------------------------------

    def _build_widgets(self) -> None:
        size = f"{CANVAS_SIZE}px"
        self.canvas = StrokePad(
            size=CANVAS_SIZE,
            background=self.brush.background,
            ink=self.brush.colour,
            line_width=self.brush.display_width,
            min_step=MIN_STEP,
            canvas_class=CSS["canvas"],
            off_switch={"root": f".{ROOT_CLASS}", "class": CSS["answers_off"], "targets": ANSWER_BUTTONS},
            layout=widgets.Layout(width=size, height=size),
        )
        self.canvas.add_class(CSS["pad"])
        self.prediction_label = _with_class(widgets.HTML(PROMPT_HTML), CSS["prediction"])
        self.confidence_label = widgets.HTML()
        self.bars = widgets.HTML(bars_html(None))
        # What the model sees: the 28x28 input on an ipycanvas Canvas of that size, shown 4x by CSS.
        self.preview = _with_class(
            Canvas(width=MNIST_SIZE, height=MNIST_SIZE, layout=widgets.Layout(width=f"{PREVIEW_PX}px")),
            "digit-preview",
        )
        self.preview_image = BLANK_INPUT  # what the preview shows
        self._preview_shown = False
        self.version_label = widgets.HTML(version_html(self.model.version))
        self.status = _with_class(widgets.HTML(), CSS["status"])
        self.clear_button = _button("Clear", CSS["clear"], "trash")
        self.undo_button = _button("Undo", CSS["undo"], "undo")
        self.correct_button = _button("Correct", CSS["correct"], "check", style="success")
        self.label_buttons = [_button(str(d), label_class(d)) for d in range(10)]
        self.not_digit_button = _button("Not a digit", CSS["not_digit"], "ban")
        self.prompt_mode_button = _button(FREE_MODE_TEXT, CSS["prompt_mode"], "bullseye")
        self.prompt_label = _with_class(widgets.HTML(), CSS["prompt"])
        self.done_button = _button("Done", CSS["done"], "check", style="success")
        self.skip_button = _button("Skip", CSS["skip"], "forward")
        self.root = _with_class(widgets.VBox(), ROOT_CLASS)  # its children come in layout()
        self.answers_enabled = True

    def _connect(self) -> None:
        self.canvas.on_msg(self.on_pad_message)
        self.preview.on_client_ready(self.on_preview_ready)
        self.clear_button.on_click(lambda _: self.clear())
        self.undo_button.on_click(lambda _: self.undo())
        self.correct_button.on_click(lambda _: self.submit_correct())
        for digit, button in enumerate(self.label_buttons):
            button.on_click(lambda _, d=digit: self.submit(d))
        self.not_digit_button.on_click(lambda _: self.submit(NOT_A_DIGIT))
        self.prompt_mode_button.on_click(lambda _: self.toggle_prompt_mode())
        self.done_button.on_click(lambda _: self.submit_prompted())
        self.skip_button.on_click(lambda _: self.skip_prompt())

    def layout(self) -> widgets.Widget:
        tools = _with_class(widgets.HBox([self.undo_button, self.clear_button]), "digit-buttons")
        left = _with_class(widgets.VBox([self.canvas, tools]), "digit-drawing")
        right = widgets.VBox(
            [
                widgets.HBox([self.prediction_label, self.confidence_label]),
                self.bars,
                widgets.HBox([widgets.HTML("model input:"), self.preview]),
                self.version_label,
            ]
        )
        answer = _with_class(
            widgets.HBox([widgets.HTML("It was actually:&nbsp;"), *self.label_buttons, self.not_digit_button]),
            "digit-answers",
        )
        # Free drawing answers with these; prompted drawing with Done/Skip (one set shows at a time).
        self.free_answers = widgets.VBox([_with_class(widgets.HBox([self.correct_button]), "digit-buttons"), answer])
        self.prompted_answers = _with_class(
            widgets.HBox([self.prompt_label, self.done_button, self.skip_button]), "digit-buttons"
        )
        self._show_mode()
        self.root.children = [
            widgets.HTML(STYLE),
            _with_class(widgets.HBox([self.prompt_mode_button]), "digit-buttons"),
            _with_class(widgets.HBox([left, right]), "digit-row"),
            self.free_answers,
            self.prompted_answers,
            self.status,
        ]
        return self.root

    # --- drawing ------------------------------------------------------------------------------

    @_guarded
    def on_pad_message(self, _widget, content, _buffers=None) -> None:
        """A message from the page's pad: a finished stroke, or the page (re)connecting."""
        event = content.get("event") if isinstance(content, dict) else None
        if event == "stroke":
            self.add_stroke(content.get("points"))
        elif event == "client_ready" and not self.pad.empty:  # a reconnected page gets the drawing back
            self.canvas.show_strokes(self.pad.strokes)

    def add_stroke(self, points) -> None:
        """A stroke as the page sends it ([x0, y0, x1, y1, ...] in canvas px): keep it and predict,
        or say why not and make the page show the drawing as it was."""
        try:
            reason = self.pad.add_stroke(unflatten(points))
        except ValueError:
            reason = "That stroke could not be read, so it was not added. Please draw it again."
        if reason:
            self.show_status(reason, error=True)
            self.canvas.show_strokes(self.pad.strokes)
            return
        self.update_prediction()

    @_guarded
    def undo(self) -> None:
        if self.pad.undo():
            self.canvas.show_strokes(self.pad.strokes)
            self.update_prediction()

    @_guarded
    def clear(self, status: str = "") -> None:
        self.pad.clear()
        self.canvas.show_strokes([])
        self.update_prediction()
        self.show_status(status)

    # --- prediction ---------------------------------------------------------------------------

    def update_prediction(self) -> None:
        self.prediction = None
        if not self.pad.empty:
            model = self.model  # checked before every prediction: a promoted model is used at once
            self.version_label.value = version_html(model.version)
            try:
                self.prediction = predict_strokes(model, self.pad.as_lists(), self.brush)
            except DrawingError as e:
                self.show_status(str(e), error=True)
        self._show_prediction()
        self.canvas.predicted += 1  # last: the page knows this drawing is answered

    def _show_prediction(self) -> None:
        p = self.prediction
        if p is None:
            self.prediction_label.value = PROMPT_HTML
            self.confidence_label.value = ""
            self.bars.value = bars_html(None)
            self.preview_image = BLANK_INPUT
        else:
            self.prediction_label.value = prediction_html(p)
            self.confidence_label.value = "" if p.rejected else f"<b>{p.confidence:.0%}</b> sure"
            self.bars.value = bars_html(p.probabilities)
            self.preview_image = p.image
        self._draw_preview()
        self._enable_answers(p is not None and self.pad.drawing_id not in self.saved_ids)

    @_guarded
    def on_preview_ready(self) -> None:
        """A page shows the preview. Pixels sent before are lost, and with them ipycanvas' word of which
        canvas it draws on (said once per kernel): say it again, then draw."""
        _CANVAS_MANAGER._current_canvas = None
        self._preview_shown = True
        self._draw_preview()

    def _draw_preview(self) -> None:
        if self._preview_shown:
            with hold_canvas():  # the canvas switch and the pixels in one message
                self.preview.put_image_data(np.repeat(self.preview_image[:, :, None], 3, axis=2), 0, 0)

    def _enable_answers(self, enabled: bool) -> None:
        """The answer buttons on or off: one class on the dashboard (one widget message when it changes)."""
        self.answers_enabled = enabled
        if enabled:
            self.root.remove_class(CSS["answers_off"])
        else:
            self.root.add_class(CSS["answers_off"])

    # --- prompted drawing ---------------------------------------------------------------------

    @_guarded
    def toggle_prompt_mode(self) -> None:
        """Free drawing <-> prompted drawing; the drawing on the canvas stays (nothing is stored)."""
        self.prompt = self.prompts.next() if self.prompt is None else None
        self._show_mode()

    def _show_mode(self) -> None:
        prompted = self.prompt is not None
        self.prompt_label.value = prompt_html(self.prompt) if prompted else ""
        self.prompt_mode_button.description = PROMPTED_MODE_TEXT if prompted else FREE_MODE_TEXT
        if hasattr(self, "free_answers"):  # built by layout()
            self.free_answers.layout.display = "none" if prompted else None
            self.prompted_answers.layout.display = None if prompted else "none"

    @_guarded
    def submit_prompted(self) -> str | None:
        """Store the drawing under the prompt's label (label_source "prompt"), then ask for the next digit."""
        if self.prompt is None:
            return None
        asked = self.prompt
        status = self.submit(asked, label_source="prompt")
        if status is not None:
            self.prompts.record(asked)
            self.prompt = self.prompts.next()
            self._show_mode()
        return status

    @_guarded
    def skip_prompt(self) -> None:
        """Another digit, nothing stored; the canvas is cleared for it."""
        if self.prompt is None:
            return
        self.prompt = self.prompts.next(avoid=self.prompt)
        self._show_mode()
        self.clear(status="Skipped: nothing was saved.")

    # --- feedback -----------------------------------------------------------------------------

    def submit_correct(self) -> None:
        """The model was right: its digit, or "not a digit" when that was its answer."""
        if self.prediction is not None:
            self.submit(NOT_A_DIGIT if self.prediction.rejected else self.prediction.digit)

    @_guarded
    def submit(self, label, label_source: str | None = None) -> str | None:
        """Store the current drawing with its true label (0-9 or NOT_A_DIGIT); returns the store's status or None.

        `label_source` "prompt" for a prompted drawing; None: the store derives confirmed/corrected.
        """
        if self.prediction is None or self.pad.empty:
            self.show_status("Draw a digit first.", error=True)
            return None
        if self.pad.drawing_id in self.saved_ids:
            self.show_status("This drawing is already saved.")
            return None
        if not self.submit_limit.allow():
            wait = max(1, math.ceil(self.submit_limit.wait_s()))
            self.show_status(f"Too many answers in a short time: wait {wait} s, then answer again.", error=True)
            return None
        self._enable_answers(False)  # a second click while this one is stored does nothing
        try:
            feedback = self._feedback(label, label_source)
            result = self.store.submit(feedback)
        except FeedbackError as e:
            self._enable_answers(True)
            self.show_status(f"Not saved: {e}", error=True)
            return None
        self.saved_ids.add(feedback.submission_id)
        self.clear(status=result.message)
        return result.status

    def _feedback(self, label, label_source: str | None = None):
        from digitlib.store import Feedback

        p = self.prediction
        return Feedback.create(
            strokes=self.pad.as_lists(),
            true_label=label,
            probabilities=p.probabilities,
            image=p.image,
            model_version=p.model_version or self.model.version,
            session_id=self.session_id,
            submission_id=self.pad.drawing_id,
            rejected=p.rejected,
            not_digit_probability=p.not_digit,
            label_source=label_source,
        )

    def show_status(self, text: str, error: bool = False) -> None:
        colour = "#b00" if error else "#060"
        self.status.value = f'<span style="color:{colour}">{html.escape(text)}</span>' if text else ""


def _with_class(widget: widgets.Widget, css: str) -> widgets.Widget:
    widget.add_class(css)
    return widget


def _button(text: str, css: str, icon: str = "", style: str = "", width: str = "auto") -> widgets.Button:
    button = widgets.Button(description=text, icon=icon, button_style=style, layout=widgets.Layout(width=width))
    return _with_class(button, css)


def build_dashboard(model_dir: str | None = None, database_url: str | None = None) -> widgets.Widget:
    """The dashboard's whole page; a model or database that cannot be used gives a message, not a traceback."""
    try:
        # Without a model named here, follow the registry's current pointer (DIGITLIB_MODEL still pins one).
        model = load_onnx_model(model_dir) if model_dir else LiveModel()
        store = FeedbackStore(database_url)
    except (CheckpointError, StoreConfigError) as e:
        log.error("dashboard cannot start: %s", e)
        return widgets.HTML(f"<h3>The dashboard cannot start</h3><p>{html.escape(str(e))}</p>")
    return Dashboard(model, store).layout()
