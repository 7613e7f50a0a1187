"""castrl.core is pure: torch and the stdlib only, no I/O, no print (house rule 4)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import castrl.core

CORE_DIR = Path(castrl.core.__file__).parent
CORE_FILES = sorted(CORE_DIR.glob("*.py"))
FORBIDDEN = ("transformers", "trl", "verl", "datasets", "peft", "accelerate", "math_verify", "castrl.trl")


def test_core_files_found():
    assert {p.name for p in CORE_FILES} >= {
        "advantages.py",
        "config.py",
        "groups.py",
        "losses.py",
        "stats.py",
    }


def test_importing_core_pulls_in_no_framework():
    code = "import castrl.core, json, sys; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    modules = json.loads(out.stdout.strip().splitlines()[-1])
    assert "castrl.core" in modules and "torch" in modules
    bad = [m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert not bad, f"castrl.core imported {bad}"


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_core_source_imports_only_torch_and_stdlib():
    allowed = set(sys.stdlib_module_names) | {"torch", "__future__"}
    for path in CORE_FILES:
        extra = _imported_roots(path) - allowed
        assert not extra, f"{path.name} imports {sorted(extra)}"


def test_core_source_has_no_print_or_open():
    for path in CORE_FILES:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("print", "open", "input", "breakpoint"), (
                    f"{path.name}:{node.lineno}"
                )
        text = path.read_text()
        assert "print(" not in text and "open(" not in text, path.name
