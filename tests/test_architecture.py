"""The structure docs/architecture.md describes: each concern lives in one module."""

from __future__ import annotations

import re

from conftest import REPO

from jaxgpt import rundir

LIBRARY = [p for p in (REPO / "jaxgpt").rglob("*.py") if "cli" not in p.relative_to(REPO / "jaxgpt").parts]


def code_of(path) -> str:
    """The file without comments and docstrings' prose lines: what it does, not what it says."""
    text = re.sub(r'"""(.|\n)*?"""', "", path.read_text(encoding="utf-8"))
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def test_only_the_command_line_layer_parses_flags():
    offenders = [p.name for p in LIBRARY if re.search(r"^\s*(import|from) (argparse|simple_parsing)", code_of(p),
                                                      re.MULTILINE)]
    assert offenders == []


def test_only_rundir_spells_the_run_directory_file_names():
    names = [rundir.CONFIG, rundir.TOKENIZER, rundir.METRICS, rundir.PLOT, rundir.CHECKPOINTS, rundir.BEST,
             rundir.UNUSABLE]
    offenders = [(p.name, name) for p in (REPO / "jaxgpt").rglob("*.py") if p.name != "rundir.py"
                 for name in names if f'"{name}"' in code_of(p) or f"'{name}'" in code_of(p)]
    assert offenders == []


def test_only_model_construction_tells_the_models_apart():
    offenders = [p.name for p in (REPO / "jaxgpt").rglob("*.py")
                 if p.name not in ("model.py", "config.py") and "bigram" in code_of(p)]
    assert offenders == []
