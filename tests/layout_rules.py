"""castrl's layout rules, read from the source (docs/architecture.md, "Rules that keep this shape"):
who imports whom, where `.generate(` and the chat template are called, how long a module is. Shared by
tests/test_layout.py and the bench's import-cycle test."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import castrl

PACKAGE_DIR = Path(castrl.__file__).parent  # castrl/
MAX_LINES = 400
# The host adapters: their hosts' rollout engines and tokenisation are theirs to call.
HOST_ADAPTERS = ("castrl.trl", "castrl.integrations")


def module_name(path: Path, package_dir: Path = PACKAGE_DIR) -> str:
    """`castrl/bench/common/cells.py` -> `castrl.bench.common.cells` (a package's `__init__` -> the package)."""
    parts = path.relative_to(package_dir.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, name: str, is_package: bool = False) -> set[str]:
    """What module `name` imports, at module level or inside a function: each imported module, and for
    `from m import x` also `m.x` (x may be a submodule). Relative imports are resolved against `name`."""
    package = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([module] if module else [])])
            out.add(module)
            out.update(f"{module}.{alias.name}" for alias in node.names)
    return out


def source_files(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Module name -> file of every module under castrl/."""
    return {module_name(path, package_dir): path for path in sorted(package_dir.rglob("*.py"))}


def import_graph(prefix: str = "castrl") -> dict[str, set[str]]:
    """Module -> the castrl modules it imports, for the modules whose name starts with `prefix`."""
    files = source_files()
    graph = {}
    for name, path in files.items():
        if name == prefix or name.startswith(prefix + "."):
            names = imported_names(path.read_text(), name, path.name == "__init__.py")
            graph[name] = {n for n in names if n in files}
    return graph


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def bench_violations(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """The bench's rules: no tier imports another tier, `common` imports no tier or suite, no bench module
    imports `castrl.commands`, and no runner (`common`, `tiers`, `suites`) imports report code. One line
    per broken rule."""
    out = []
    for module, imports in sorted(graph.items()):
        if not _under(module, "castrl.bench"):
            continue
        for imported in sorted(imports):
            if _under(imported, "castrl.commands"):
                out.append(f"{module} imports the command module {imported}")
            if (_under(module, "castrl.bench.tiers") and module != "castrl.bench.tiers"
                    and _under(imported, "castrl.bench.tiers") and imported not in (module, "castrl.bench.tiers")):
                out.append(f"tier {module} imports tier {imported}")
            if _under(module, "castrl.bench.common") and any(
                    _under(imported, f"castrl.bench.{floor}") for floor in ("tiers", "suites")):
                out.append(f"common module {module} imports {imported}")
            runner = any(_under(module, f"castrl.bench.{floor}") for floor in ("common", "tiers", "suites"))
            if runner and _under(imported, "castrl.bench.report"):
                out.append(f"runner {module} imports report code {imported}")
    return out


def call_sites(source: str, attribute: str) -> list[int]:
    """Lines of the calls `<expr>.<attribute>(...)` in `source`."""
    return sorted(node.lineno for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)
                  and isinstance(node.func, ast.Attribute) and node.func.attr == attribute)


def calls_outside(attribute: str, home: str) -> dict[str, list[int]]:
    """module -> lines calling `.<attribute>(` outside the package `home` and the host adapters."""
    out = {}
    for name, path in source_files().items():
        if _under(name, home) or any(_under(name, host) for host in HOST_ADAPTERS):
            continue
        lines = call_sites(path.read_text(), attribute)
        if lines:
            out[name] = lines
    return out


def long_modules(limit: int = MAX_LINES) -> dict[str, int]:
    """module -> line count of every module longer than `limit` lines."""
    out = {}
    for name, path in source_files().items():
        n = len(path.read_text().splitlines())
        if n > limit:
            out[name] = n
    return out
