"""The structure docs/architecture.md describes: layers that import only downward, no import cycles, commands
on top that nothing imports, and each concern in one module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO

from jaxgpt.store import rundir

PACKAGE = REPO / "jaxgpt"
# jaxgpt/NAME.py: `python -m jaxgpt.NAME`
COMMANDS = ("train", "sample", "eval", "prepare", "convert", "export", "inspect", "plot")
# Bottom to top; a module imports modules of its own layer and the layers below, never above.
LAYERS = ("system", "core", "data", "store", "weights", "run", "cli", "commands")
# Beyond "nothing above": what each layer may import (docs/architecture.md's picture).
MAY_IMPORT = {
    "system": set(),
    "core": {"system"},
    "data": {"core", "system"},
    "store": {"data", "core", "system"},
    "weights": {"store", "data", "core", "system"},
    "run": {"weights", "store", "data", "core", "system"},
    "cli": {"core", "system"},
    "commands": {"cli", "run", "weights", "store", "data", "core", "system"},
}
LIBRARY = [p for p in PACKAGE.rglob("*.py") if "cli" not in p.relative_to(PACKAGE).parts
           and p.relative_to(PACKAGE).as_posix() not in {f"{c}.py" for c in COMMANDS}]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str | None:
    """The layer of a jaxgpt module; None for the package's face (jaxgpt/__init__.py) and the PyTorch references."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "torch_reference":
        return None
    if parts[1] in COMMANDS and len(parts) == 2:
        return "commands"
    return parts[1]


def jaxgpt_imports(path: Path) -> set[str]:
    """The jaxgpt modules `path` imports (anywhere in the file: a function-level import counts too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("jaxgpt"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxgpt"):
            for alias in node.names:  # `from jaxgpt.system import sharding` imports the module jaxgpt.system.sharding
                submodule = f"{node.module}.{alias.name}"
                is_module = (REPO / (submodule.replace(".", "/") + ".py")).is_file()
                found.add(submodule if is_module else node.module)
    return found


GRAPH = {module_name(p): jaxgpt_imports(p) for p in PACKAGE.rglob("*.py")}


def test_every_module_is_in_a_layer():
    unplaced = [m for m in GRAPH if layer_of(m) not in LAYERS and m not in ("jaxgpt", "jaxgpt.configs")
                and not m.startswith("jaxgpt.torch_reference")]
    assert unplaced == []


def test_layers_import_only_downward():
    offenders = []
    for module, imported in GRAPH.items():
        layer = layer_of(module)
        if layer is None:
            continue
        allowed = MAY_IMPORT[layer] | {layer}
        offenders += [f"{module} -> {other}" for other in imported
                      if other != "jaxgpt" and layer_of(other) not in allowed]
    assert offenders == []


def test_nothing_imports_a_command():
    offenders = [f"{module} -> {other}" for module, imported in GRAPH.items() for other in imported
                 if layer_of(other) == "commands"]
    assert offenders == []


def test_the_package_face_and_the_pytorch_references_stay_light():
    """`import jaxgpt` loads the model and its config only; the PyTorch references import nothing of jaxgpt."""
    assert {layer_of(m) for m in GRAPH["jaxgpt"]} <= {"core", "data"}
    assert all(not imported for module, imported in GRAPH.items() if module.startswith("jaxgpt.torch_reference"))


def test_no_import_cycles():
    done, on_path, cycles = set(), [], []

    def visit(module: str) -> None:
        if module in on_path:
            cycles.append(on_path[on_path.index(module):] + [module])
            return
        if module in done:
            return
        on_path.append(module)
        for other in GRAPH.get(module, ()):
            visit(other)
        on_path.pop()
        done.add(module)

    for module in GRAPH:
        visit(module)
    assert cycles == []


def test_tests_import_public_names_only():
    private = re.compile(r"^\s*from jaxgpt[\w.]* import [^#\n]*\b_\w+", re.MULTILINE)
    offenders = [p.name for p in (REPO / "tests").glob("*.py") if private.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def code_of(path) -> str:
    """The file without comments and docstrings' prose lines: what it does, not what it says."""
    text = re.sub(r'"""(.|\n)*?"""', "", path.read_text(encoding="utf-8"))
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def test_only_the_command_line_layer_parses_flags():
    offenders = [p.name for p in LIBRARY if re.search(r"^\s*(import|from) (argparse|simple_parsing)", code_of(p),
                                                      re.MULTILINE)]
    assert offenders == []


def test_only_rundir_spells_the_run_directory_file_names():
    """tokenizer.json is the tokenizer's own file name (jaxgpt.data.tokenizers), shared by run and data directories."""
    names = {rundir.CONFIG: "rundir.py", rundir.TOKENIZER: "tokenizers.py", rundir.METRICS: "rundir.py",
             rundir.PLOT: "rundir.py", rundir.CHECKPOINTS: "rundir.py", rundir.BEST: "rundir.py",
             rundir.UNUSABLE: "rundir.py"}
    # Hugging Face's save_pretrained directory has a config.json and a tokenizer.json of its own, in its formats
    hugging_face = {(PACKAGE / "weights" / "export.py", rundir.CONFIG), (PACKAGE / "weights" / "export.py",
                                                                         rundir.TOKENIZER)}
    offenders = [(p.name, name) for p in PACKAGE.rglob("*.py") for name, owner in names.items()
                 if p.name != owner and (p, name) not in hugging_face
                 and (f'"{name}"' in code_of(p) or f"'{name}'" in code_of(p))]
    assert offenders == []


def test_only_model_construction_tells_the_models_apart():
    offenders = [p.name for p in PACKAGE.rglob("*.py")
                 if p.name not in ("model.py", "config.py") and "bigram" in code_of(p)]
    assert offenders == []
