"""A non-editable install ships the configs as `jaxgpt.configs`, so `--config=NAME` works from any install."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import REPO


def test_wheel_ships_the_configs(tmp_path: Path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("jaxgpt-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {Path(n).name for n in names if n.startswith("jaxgpt/configs/")}
    in_repo = {p.name for p in (REPO / "configs").glob("*.py")}
    assert in_repo <= shipped and {"small.py", "lecture.py", "tiny.py", "bigram.py"} <= shipped
    assert not any("input.txt" in n for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    for command in ("train", "sample", "convert", "plot", "prepare", "eval"):
        assert f"jaxgpt-{command} = jaxgpt.{command}:entry_point" in scripts
