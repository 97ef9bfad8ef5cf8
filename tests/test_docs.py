"""The examples in README.md and docs/*.md run as written, and the links between those files resolve.

Every fenced ```python block of a file is executed with `exec`, in the file's order and in one namespace per file,
in an empty temporary working directory (so `out_dir="out"` lands there) and with JAXGPT_DATA set to the
`shakespeare_path` fixture's file ($JAXGPT_DATA, else the user-cache copy). The test is parametrized by file, and a
traceback points at the failing line of the Markdown file itself. The examples run in this process, not in a
subprocess each, so that they share JAX's compiled programs; they use small settings (the `tiny` config, the
`small` model untrained) and take seconds.

Only ```python blocks are executed. ```bash blocks (commands to type: full training runs, installs, multi-host
launches), ```text blocks (program output, directory listings) and untagged fences are not. No Python example is
exempt: every ```python block must run here. Should a Python example ever be unable to run in a test (say one that
needs `jax.distributed.initialize` on a real cluster), it must be fenced as ```text, which says honestly that it
is not checked. `test_no_python_fence_escapes` fails on tags that merely look like Python (py, python3, pycon, ...),
so that no example drops out of the test through its tag.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
EXECUTED = "python"

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)[ \t]*(?P<tag>[^`\s]*)[^`]*$")
LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(?P<title>.+?)[ \t]*#*$")


def parse(path: Path) -> tuple[list[tuple[str, int, str]], list[tuple[int, str]]]:
    """The fenced blocks, as (tag, line number of the first code line, code dedented by its fence's indent), and
    the numbered lines outside them (fences included)."""
    blocks, prose, lines = [], [], path.read_text(encoding="utf-8").splitlines()
    opened = None  # (indent, fence, tag, index of the first code line)
    for i, line in enumerate(lines):
        if opened is None:
            prose.append((i + 1, line))
            if match := FENCE.match(line):
                opened = (match["indent"], match["fence"], match["tag"], i + 1)
            continue
        indent, fence, tag, start = opened
        closing = line.strip()
        if len(closing) >= len(fence) and closing == fence[0] * len(closing):
            code = [text[len(indent):] if text.startswith(indent) else text.lstrip() for text in lines[start:i]]
            blocks.append((tag, start + 1, "\n".join(code) + "\n"))
            prose.append((i + 1, line))
            opened = None
    assert opened is None, f"{path.name}: the fence opened at line {opened[3]} is never closed"
    return blocks, prose


def fenced_blocks(path: Path) -> list[tuple[str, int, str]]:
    return parse(path)[0]


def python_code(path: Path) -> list[tuple[str, str]]:
    """(filename, code) per python block, padded with newlines so that tracebacks give the Markdown line."""
    return [(str(path), "\n" * (line - 1) + code) for tag, line, code in fenced_blocks(path) if tag == EXECUTED]


def relative(path: Path) -> str:
    return str(path.relative_to(REPO))


WITH_PYTHON = [path for path in DOC_FILES if python_code(path)]


def test_docs_exist_and_have_examples():
    assert (REPO / "docs").is_dir() and len(DOC_FILES) > 1
    assert WITH_PYTHON, "no ```python example found in README.md or docs/*.md"


@pytest.mark.parametrize("path", DOC_FILES, ids=relative)
def test_no_python_fence_escapes(path):
    for tag, line, _ in fenced_blocks(path):
        assert tag == EXECUTED or not re.search("py", tag, re.IGNORECASE), (
            f"{relative(path)}:{line}: fence tag {tag!r} is not executed; use python, or text if it cannot run")


@pytest.mark.parametrize("path", WITH_PYTHON, ids=relative)
def test_python_examples_run(path, shakespeare_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JAXGPT_DATA", str(shakespeare_path))
    namespace = {"__name__": "__main__"}
    for filename, code in python_code(path):
        exec(compile(code, filename, "exec"), namespace)


def slug(title: str) -> str:
    """GitHub's anchor for a heading: markup and punctuation dropped, lowercase, spaces to hyphens."""
    title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title).replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(match["title"]) for _, line in parse(path)[1] if (match := HEADING.match(line))}


@pytest.mark.parametrize("path", DOC_FILES, ids=relative)
def test_relative_links_resolve(path):
    for number, line in parse(path)[1]:
        for match in LINK.finditer(line):
            target = match["target"]
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            where = f"{relative(path)}:{number}: link to {target!r}"
            assert linked.exists(), f"{where}, which does not exist"
            if anchor and linked.suffix == ".md":
                assert anchor in anchors(linked), f"{where}, which has no such heading"
