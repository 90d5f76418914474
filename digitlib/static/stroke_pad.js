// The drawing pad's browser side (anywidget ESM): the page draws the ink itself and sends each
// finished stroke to the kernel once, as {event: "stroke", points: [x0, y0, x1, y1, ...]} in
// canvas pixels. Pointer Events cover mouse, touch and pen alike. The kernel stays the keeper of
// the drawing: on Clear, Undo or a refused stroke it sends {event: "strokes", strokes: [...]} and
// the page redraws exactly that.

function render({ model, el }) {
  const size = model.get("size");
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = size;
  canvas.className = model.get("canvas_class");
  canvas.style.touchAction = "none"; // a finger draws instead of scrolling the page
  canvas.dataset.predicted = String(model.get("predicted"));
  el.appendChild(canvas);
  const ctx = canvas.getContext("2d");
  let strokes = []; // what the kernel holds, plus strokes sent and not yet answered
  let current = null; // the stroke under the pointer: [x0, y0, x1, y1, ...]
  let pointerId = null;

  function paintBackground() {
    ctx.fillStyle = model.get("background");
    ctx.fillRect(0, 0, size, size);
    ctx.strokeStyle = ctx.fillStyle = model.get("ink");
    ctx.lineWidth = model.get("line_width");
    ctx.lineCap = ctx.lineJoin = "round";
  }

  function paintStroke(flat) {
    if (flat.length === 2) {
      ctx.beginPath();
      ctx.arc(flat[0], flat[1], model.get("line_width") / 2, 0, 2 * Math.PI);
      ctx.fill();
      return;
    }
    ctx.beginPath();
    ctx.moveTo(flat[0], flat[1]);
    for (let i = 2; i < flat.length; i += 2) ctx.lineTo(flat[i], flat[i + 1]);
    ctx.stroke();
  }

  function redraw() {
    paintBackground();
    for (const flat of strokes) paintStroke(flat);
  }

  function point(event) {
    // Page pixels -> canvas pixels (the canvas may be shown scaled), clamped to its edge, 0.1 px.
    const box = canvas.getBoundingClientRect(); // border included: the drawing area is inside it
    const clamp = (v) => Math.min(Math.max(v, 0), size);
    const x = clamp(((event.clientX - box.left - canvas.clientLeft) * size) / canvas.clientWidth);
    const y = clamp(((event.clientY - box.top - canvas.clientTop) * size) / canvas.clientHeight);
    return [Math.round(x * 10) / 10, Math.round(y * 10) / 10];
  }

  // touch-action alone still lets Chromium's gesture detector see a swipe, and a fast one leaves a
  // fling that swallows the next tap on a button: the canvas keeps its touches to itself.
  const keepTouch = (event) => event.preventDefault();
  canvas.addEventListener("touchstart", keepTouch, { passive: false });
  canvas.addEventListener("touchmove", keepTouch, { passive: false });

  canvas.addEventListener("pointerdown", (event) => {
    if (!event.isPrimary || event.button > 0 || current !== null) return; // one finger, the main button
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId); // leaving the canvas goes on along its edge
    pointerId = event.pointerId;
    current = point(event);
    paintStroke(current);
  });

  canvas.addEventListener("pointermove", (event) => {
    if (current === null || event.pointerId !== pointerId) return;
    const [x, y] = point(event);
    const n = current.length;
    const [lx, ly] = [current[n - 2], current[n - 1]];
    // Closer points add no information; a stroke longer than the kernel takes stops growing.
    if (Math.hypot(x - lx, y - ly) < model.get("min_step") || n >= 2 * model.get("max_points")) return;
    current.push(x, y);
    ctx.beginPath();
    ctx.moveTo(lx, ly);
    ctx.lineTo(x, y);
    ctx.stroke();
  });

  function finish(event) {
    if (current === null || event.pointerId !== pointerId) return;
    const flat = current;
    current = pointerId = null;
    strokes.push(flat);
    model.send({ event: "stroke", points: flat });
  }
  canvas.addEventListener("pointerup", finish);
  canvas.addEventListener("pointercancel", finish);
  canvas.addEventListener("lostpointercapture", finish);

  function onMessage(message) {
    if (message && message.event === "strokes") {
      strokes = message.strokes;
      if (current !== null) strokes = strokes.concat([current]);
      redraw();
    }
  }
  function onPredicted() {
    canvas.dataset.predicted = String(model.get("predicted"));
  }
  // The off switch (see StrokePad.off_switch): aria-disabled follows the ancestor's class. The pad
  // may render before it is placed in the page, so the ancestor is looked for until found.
  const offSwitch = model.get("off_switch") || {};
  let observer = null;
  let frame = null;
  function mirrorOff(root) {
    const off = String(root.classList.contains(offSwitch.class));
    for (const target of root.querySelectorAll(offSwitch.targets)) {
      if (target.getAttribute("aria-disabled") !== off) target.setAttribute("aria-disabled", off);
    }
  }
  function watchOffSwitch(tries) {
    const root = el.closest(offSwitch.root);
    if (!root) {
      if (tries > 0) frame = requestAnimationFrame(() => watchOffSwitch(tries - 1));
      return;
    }
    mirrorOff(root);
    observer = new MutationObserver(() => mirrorOff(root)); // its class, and buttons rendered later
    observer.observe(root, { attributes: true, attributeFilter: ["class"], childList: true, subtree: true });
  }
  if (offSwitch.root && offSwitch.class && offSwitch.targets) watchOffSwitch(600); // about 10 s of frames

  model.on("msg:custom", onMessage);
  model.on("change:predicted", onPredicted);
  redraw();
  model.send({ event: "client_ready" }); // a page that reconnects gets the kernel's drawing back
  return () => {
    if (observer) observer.disconnect();
    if (frame !== null) cancelAnimationFrame(frame);
    model.off("msg:custom", onMessage);
    model.off("change:predicted", onPredicted);
  };
}

export default { render };
