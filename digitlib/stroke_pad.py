"""The drawing pad widget: the browser draws the ink and sends each stroke once, at pointer-up.

With a canvas that reports every mouse move to the kernel (ipycanvas), a visitor costs a round
trip per move: ~5 ms of server and kernel CPU, ~2.8 CPU-s per visitor, more than two cores for
one arrival a second. Here the page (static/stroke_pad.js, an anywidget ES module) handles the
Pointer Events itself and sends a finished stroke as one custom comm message,
`{"event": "stroke", "points": [x0, y0, x1, y1, ...]}`. The kernel keeps the drawing: it sends
`{"event": "strokes", "strokes": [...]}` when the page must redraw (Clear, Undo, a refused stroke,
a page that reconnects), and counts the drawings it answered in `predicted` (the page shows it
as the canvas' data-predicted, which tests and benchmarks wait on).

Nothing the browser sets is read back: the guard refuses client state updates, so every trait
here goes from kernel to page only.
"""

from __future__ import annotations

from pathlib import Path

import anywidget
import traitlets

from digitlib.preprocess import CANVAS_SIZE

ESM = (Path(__file__).parent / "static" / "stroke_pad.js").read_text()
MAX_STROKE_POINTS = 1_000  # the page stops growing a stroke here (a 16 s stroke at 60 Hz); see voila_guard.MAX_LIST


class StrokePad(anywidget.AnyWidget):
    _esm = ESM
    size = traitlets.Int(CANVAS_SIZE).tag(sync=True)
    background = traitlets.Unicode("black").tag(sync=True)
    ink = traitlets.Unicode("white").tag(sync=True)
    line_width = traitlets.Float(16.0).tag(sync=True)
    min_step = traitlets.Float(1.0).tag(sync=True)  # canvas px: closer pointer moves add only points
    max_points = traitlets.Int(MAX_STROKE_POINTS).tag(sync=True)
    canvas_class = traitlets.Unicode("").tag(sync=True)  # the CSS class of the <canvas> itself
    predicted = traitlets.Int(0).tag(sync=True)  # drawings answered so far
    # Buttons switched off by a class on an ancestor (CSS greys them): {"root": selector of that
    # ancestor, "class": the class, "targets": selector of the buttons}. The page mirrors it as
    # aria-disabled, which CSS cannot set, so screen readers and keyboard users are told too.
    off_switch = traitlets.Dict({}).tag(sync=True)

    def show_strokes(self, strokes) -> None:
        """Make the page draw exactly these strokes (lists of (x, y)) on a fresh background."""
        self.send({"event": "strokes", "strokes": [flatten(stroke) for stroke in strokes]})


def flatten(stroke) -> list[float]:
    return [round(float(v), 1) for point in stroke for v in point]


def unflatten(points) -> list[tuple[object, object]]:
    """[x0, y0, x1, y1, ...] -> [(x0, y0), ...]; ValueError when it is not a flat list of pairs."""
    if not isinstance(points, list) or not points or len(points) % 2:
        raise ValueError("a stroke is a non-empty list of x, y pairs")
    return list(zip(points[0::2], points[1::2], strict=True))
