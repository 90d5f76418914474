"""The README and docs/*.md stay true to the tree: links, anchors, make targets, layout, length."""

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "reports" / "benchmarks.md"]
README_LIMIT = 10_000  # characters: what a newcomer reads before starting

FENCE = re.compile(r"^```.*?^```", flags=re.M | re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`([^`\n]+)`")
MAKE = re.compile(r"\bmake ([a-z][\w-]*)")


def prose(text: str) -> str:
    """The text without fenced code blocks (a link there is code, not a link)."""
    return FENCE.sub("", text)


def code(text: str) -> list[str]:
    """Fenced blocks and inline code spans: where commands are written."""
    blocks = FENCE.findall(text)
    return blocks + INLINE_CODE.findall(FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", prose(page.read_text()), flags=re.M):
        base = slug(heading)
        count = seen.get(base, 0)
        found.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return found


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", text, flags=re.M))


def test_slug_follows_github():
    assert slug('Honest answers: calibrated probabilities and "not a digit"') == (
        "honest-answers-calibrated-probabilities-and-not-a-digit"
    )
    assert slug("train_speed") == "train_speed"
    assert slug("Crowd, before and after (2026-11-30)") == "crowd-before-and-after-2026-11-30"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_and_anchor_exists(page):
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    assert not broken, f"{page.name}: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_make_target_named_exists(page):
    named = {target for snippet in code(page.read_text()) for target in MAKE.findall(snippet)}
    assert named - makefile_targets() == set(), f"{page.name} names make targets the Makefile lacks"


def test_the_readme_names_the_targets_ci_and_a_newcomer_need():
    named = {target for snippet in code(README.read_text()) for target in MAKE.findall(snippet)}
    assert {"test", "setup", "dashboard", "benchmark"} <= named
    assert "make test" in (ROOT / ".ci" / "run").read_text()  # CI runs what the README says


def test_readme_is_short():
    assert len(README.read_text()) <= README_LIMIT


def test_the_readme_layout_names_paths_that_exist():
    text = README.read_text()
    block = text.split("## What is where", 1)[1].split("```", 2)[1]
    missing, parent = [], ROOT
    for line in block.splitlines():
        if not line.strip():
            continue
        names = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
        top = not line.startswith(" ")
        for name in (n.strip() for n in names.split(",")):
            path = (ROOT if top else parent) / name
            if not path.exists():
                missing.append(str(path.relative_to(ROOT)))
            if top and name.endswith("/"):
                parent = path
    assert not missing


def test_every_benchmark_run_all_runs_is_documented():
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_run_all", ROOT / "benchmarks" / "run_all.py")
    run_all = importlib.util.module_from_spec(spec)
    sys.modules["readme_run_all"] = run_all  # dataclasses look their module up there
    spec.loader.exec_module(run_all)
    documented = set(re.findall(r"^\| `(\w+)\.py` \|", (ROOT / "docs" / "benchmarks.md").read_text(), flags=re.M))
    assert set(run_all.BENCHMARKS) <= documented
