"""Every ```python block of README.md and docs/ runs as written, in a fresh interpreter.

A block runs alone, from an empty working directory, and must exit 0 with
nothing on stderr (a traceback, a logged warning, a "never awaited"
coroutine all fail it). An HTML comment on the line before a block may say
more, comma-separated: ``needs aiohttp`` (a module) or ``needs chromium``
(a program on PATH) skips the block, saying why, where that is missing;
``logs`` lets it write to stderr (it shows failures, which are logged).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MARK = re.compile(r"^\s*<!-- example: (?P<words>.*?) -->\s*$")
WORDS = re.compile(r"needs [\w.-]+|logs")


@dataclass(frozen=True)
class Example:
    page: Path
    line: int  # of the opening fence, 1-based
    code: str
    needs: tuple[str, ...]
    logs: bool

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def examples(page: Path) -> list[Example]:
    """The ```python blocks of ``page``, with what the comment before each says it needs."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Example] = []
    i = 0
    while i < len(lines):
        fence = lines[i].lstrip()
        if fence.startswith("```") and fence[3:].strip() == "python":
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            body = textwrap.dedent("\n".join(lines[i + 1 : end])) + "\n"
            mark = MARK.match(lines[i - 1]) if i else None
            words = [w.strip() for w in mark["words"].split(",")] if mark else []
            assert all(WORDS.fullmatch(w) for w in words), (page, i + 1, words)
            needs = tuple(w.removeprefix("needs ") for w in words if w != "logs")
            found.append(Example(page, i + 1, body, needs, "logs" in words))
            i = end
        i += 1
    return found


EXAMPLES = [example for page in PAGES for example in examples(page)]


def missing(need: str) -> bool:
    if shutil.which(need):
        return False
    try:
        return importlib.util.find_spec(need) is None
    except ModuleNotFoundError:
        return True


def test_the_collector_finds_the_examples() -> None:
    # If a change to the pages or to this parser lost the blocks, nothing would run.
    by_page = {example.page.name for example in EXAMPLES}
    assert {"README.md", "crawler.md", "scratch.md", "monitoring.md"} <= by_page
    assert sum(example.page.name == "README.md" for example in EXAMPLES) >= 2
    assert all("```" not in example.code for example in EXAMPLES)


def run(example: Example, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``example`` alone in a fresh interpreter, from ``cwd``."""
    return subprocess.run(
        [sys.executable, "-c", example.code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.id)
def test_example_runs(example: Example, tmp_path: Path) -> None:
    absent = [need for need in example.needs if missing(need)]
    if absent:
        pytest.skip(f"needs {', '.join(absent)}")
    proc = run(example, tmp_path)
    stderr = "" if example.logs else proc.stderr
    assert (proc.returncode, stderr) == (0, ""), f"{example.id}\n{proc.stdout}\n{proc.stderr}"


def test_readme_links_point_at_files_in_the_checkout() -> None:
    # mkdocs --strict checks the links between docs pages; README is no page of the site.
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", (ROOT / "README.md").read_text("utf-8"))
    assert "docs/guides/crawler.md" in links  # the pattern still finds them
    assert [link for link in links if not (ROOT / link).is_file()] == []


def test_readme_gives_two_commands_and_ci_runs_the_same_tests() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Two commands\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```console\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    assert commands == ["$ .venv/bin/python -m examples.demo", "$ .venv/bin/python -m pytest"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert ".venv/bin/python -m pytest" in ci
    # "what CI runs, after ruff and mypy"
    tests = ci.index(".venv/bin/python -m pytest")
    assert ci.index(".venv/bin/ruff check .") < tests and ci.index(".venv/bin/mypy") < tests


def test_the_quick_start_prints_the_stats_its_comment_shows(tmp_path: Path) -> None:
    quick = next(example for example in EXAMPLES if example.page.name == "README.md")
    shown = re.search(r"^\s*print\(fc\.stats\(\)\)\s+# (Stats\(.*), \.\.\.\)$", quick.code, re.M)
    assert shown is not None, quick.code
    proc = run(quick, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(shown[1] + ", "), (shown[1], proc.stdout)
