"""The crowd benchmark's figures with real browsers: one headless Chromium context per visitor.

The check that benchmarks/crowd.py's simulated visitors are faithful: the same arrivals
(--rate), think time, pen-digit drawings (replayed at 60 Hz pointer moves), answers and
report (crowd.run: visitors served, page open p50/p95/max, stroke end -> prediction
p50/p95/p99/max, answers sent vs rows stored, RSS and CPU of the server tree), driven through
Chromium instead. A browser costs a core of its own on a small machine, so keep counts low.

    .venv/bin/python benchmarks/load_dashboard.py [--visitors 3] [--rate 1] [--think 2,3] [--drawings 5] [--json]

Page open here includes the browser loading the page's scripts; stroke end -> prediction is
mouse-up to the pad's data-predicted count going up (the kernel sets it after the digit, bars
and model input), as the protocol client waits for the same count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import crowd  # noqa: E402
from dashboard_server import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from voila_client import Visit  # noqa: E402

PAGE_TIMEOUT_MS = 180_000
CANVAS_READY = """() => { const c = document.querySelector('canvas.digit-canvas');
  return c && c.getContext('2d').getImageData(2, 2, 1, 1).data[3] === 255; }"""
PREDICTED = "() => Number(document.querySelector('canvas.digit-canvas').dataset.predicted)"
PREDICTED_PAST = "(n) => Number(document.querySelector('canvas.digit-canvas').dataset.predicted) > n"
# A stored answer clears the pad (the prompt returns) and says so in the status line, which may
# repeat the previous answer's words; a refused one leaves the drawing and says why.
ANSWERED = """() => { const text = (sel) => (document.querySelector(sel) || {innerText: ''}).innerText.trim();
  const status = text('.digit-status');
  return (text('.digit-prediction') === 'Draw a digit' && status !== '') || /Not saved|Too many/.test(status); }"""
MOVE_S = 0.016  # one pointer event a frame, as the protocol client paces its moves


async def stroke(page, box, points, timeout_ms: float) -> float:
    """Draw one stroke; ms from mouse-up to the prediction shown (the pad's predicted count up)."""
    before = await page.evaluate(PREDICTED)
    x, y = points[0]
    await page.mouse.move(box["x"] + x, box["y"] + y)
    await page.mouse.down()
    for x, y in points[1:]:
        await asyncio.sleep(MOVE_S)
        await page.mouse.move(box["x"] + x, box["y"] + y)
    await page.mouse.up()
    ended = time.monotonic()
    await page.wait_for_function(PREDICTED_PAST, arg=before, timeout=timeout_ms, polling=5)
    return (time.monotonic() - ended) * 1000


async def visit(browser, url: str, start_at: float, drawings, seed: int, args, result: Visit) -> None:
    rng = random.Random(seed)
    timeout_ms = args.timeout * 1000
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    context = await browser.new_context(viewport={"width": 1000, "height": 800})
    page = await context.new_page()
    try:
        started = time.monotonic()
        await page.goto(url, timeout=PAGE_TIMEOUT_MS)
        await page.wait_for_function(CANVAS_READY, timeout=PAGE_TIMEOUT_MS)
        result.page_open_s = time.monotonic() - started
        box = await page.locator(".digit-canvas").bounding_box()
        for drawing in drawings:
            await asyncio.sleep(rng.uniform(*args.think))
            for points in drawing["strokes"]:
                result.predict_ms.append(await stroke(page, box, points, timeout_ms))
            label, (x, y) = drawing["label"], drawing["strokes"][0][0]
            answer = (label, float(x), float(y))
            result.answers_sent.append(answer)
            clicked = time.monotonic()
            await page.locator(f".digit-label-{label}").click(timeout=timeout_ms)
            await page.wait_for_function(ANSWERED, timeout=timeout_ms)
            status = (await page.locator(".digit-status").inner_text()).strip()
            if "Saved" not in status:
                result.refused.append(status)
                continue
            result.save_ms.append((time.monotonic() - clicked) * 1000)
            result.saved.append(answer)
    except Exception as e:  # a timeout or a dead page is what this benchmark measures
        result.error = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    finally:
        await page.close(run_before_unload=True)  # a visitor leaving: the page's shutdown beacon
        await asyncio.sleep(0.5)
        await context.close()


async def crowd_in_chromium(args, url: str, drawings) -> tuple[list[Visit], None]:
    from playwright.async_api import async_playwright

    results = [Visit() for _ in range(args.visitors)]
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        t0 = time.monotonic() + 0.5
        await asyncio.gather(
            *(
                visit(
                    browser,
                    url,
                    t0 + i / args.rate,
                    drawings[i * args.drawings : (i + 1) * args.drawings],
                    args.seed + i,
                    args,
                    r,
                )
                for i, r in enumerate(results)
            )
        )
        await browser.close()
    return results, None  # Chromium's renderers come and go with the contexts: not counted


def drive_chromium(args, url: str, drawings, stop) -> tuple[list[Visit], None]:
    return asyncio.run(crowd_in_chromium(args, url, drawings))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    crowd.add_arguments(parser, visitors=3)
    args = parser.parse_args(argv)
    crowd.check_arguments(parser, args)
    result = crowd.run(args, drive=drive_chromium)
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
