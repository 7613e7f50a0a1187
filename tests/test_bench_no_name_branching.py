"""No code outside `castrl/core` branches on a registered estimator's name.

What an estimator needs (its config class, whether it has a teacher, the teacher context the paper
pairs it with) lives in its registry entry (`castrl.core.get_estimator`); a caller that compares an
estimator name with a string literal re-encodes that knowledge where the registry cannot see it. The
scan parses every module of the package with `ast` and flags, outside `castrl/core`:
- comparisons (`==`, `!=`, `in`, `not in`, `is`) with a registered name, alone or in a literal
  tuple / list / set (`name in ("rlsd", "rlrt")`), or with a module-level constant holding one
  (`BASELINE = "grpo"` ... `m == BASELINE`);
- `match` cases on a registered name;
- lookups by a registered name: `d["cast"]`, `d.get("cast")`, `.pop` / `.setdefault`;
- `str.startswith` / `str.endswith` with a registered name (`m.startswith("cast")`).
Naming an estimator to *use* it (`compute_advantages("grpo", ...)`, a tier's method list, a
dataclass default) is not branching and is not flagged.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import castrl
from castrl.core import ADVANTAGE_ESTIMATORS

PACKAGE = Path(castrl.__file__).parent
EXEMPT = ("core",)  # the registry's own package
# Files outside castrl/bench that still branch on estimator names, to be fixed by their owners (path
# relative to the package -> why it is listed). Empty it as they are fixed; an entry whose file no
# longer violates fails the test, so the list only shrinks.
ALLOWED: dict[str, str] = {}  # files allowed to branch on estimator names; keep it empty
LOOKUP_METHODS = {"get", "pop", "setdefault"}
AFFIX_METHODS = {"startswith", "endswith"}


def _module_constants(tree: ast.Module) -> dict[str, str]:
    """Module-level `NAME = "literal"` assignments."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            out.update({t.id: node.value.value for t in node.targets if isinstance(t, ast.Name)})
        elif (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
              and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            out[node.target.id] = node.value.value
    return out


def _strings(node: ast.AST, constants: dict[str, str]) -> list[str]:
    """String values `node` stands for: a literal, a module constant, or a literal tuple/list/set of them."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Name) and node.id in constants:
        return [constants[node.id]]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for elt in node.elts for s in _strings(elt, constants)]
    return []


def _named(node: ast.AST, constants: dict[str, str]) -> list[str]:
    """Registered estimator names that `node` compares, matches or looks up."""
    if isinstance(node, ast.Compare):
        candidates = [node.left, *node.comparators]
    elif isinstance(node, ast.MatchValue):
        candidates = [node.value]
    elif isinstance(node, ast.Subscript):  # d["cast"]; a tuple key is not a name lookup
        candidates = [] if isinstance(node.slice, ast.Tuple) else [node.slice]
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
        method, first = node.func.attr, node.args[0]
        lookup = method in LOOKUP_METHODS and not isinstance(first, (ast.Tuple, ast.List, ast.Set))
        candidates = [first] if lookup or method in AFFIX_METHODS else []
    else:
        candidates = []
    names = set(ADVANTAGE_ESTIMATORS.names())
    return [s for c in candidates for s in _strings(c, constants) if s in names]


def violations(path: Path) -> Iterator[str]:
    """`file:line: names: source` for every place `path` branches on a registered estimator name."""
    text = path.read_text()
    tree = ast.parse(text, filename=str(path))
    constants = _module_constants(tree)
    for node in ast.walk(tree):
        names = _named(node, constants)
        if names:
            source = (ast.get_source_segment(text, node) or "").splitlines()[0][:100]
            yield f"{path.relative_to(PACKAGE)}:{node.lineno}: {sorted(set(names))}: {source}"


def _scanned_files() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if p.relative_to(PACKAGE).parts[0] not in EXEMPT]


def test_no_module_outside_core_branches_on_estimator_names():
    found = {p.relative_to(PACKAGE).as_posix(): list(violations(p)) for p in _scanned_files()}
    offending = [v for rel, vs in found.items() if rel not in ALLOWED for v in vs]
    assert not offending, "branching on estimator names outside castrl/core (use the registry):\n" + "\n".join(
        offending)
    stale = [rel for rel in ALLOWED if not found.get(rel)]
    assert not stale, f"ALLOWED lists files that no longer branch on estimator names; remove them: {stale}"


def _probe(source: str) -> list[str]:
    tree = ast.parse(source)
    constants = _module_constants(tree)
    return sorted({name for node in ast.walk(tree) for name in _named(node, constants)})


def test_the_scan_finds_each_kind_of_branching():
    """The scanner itself: each pattern it must catch, and uses it must leave alone."""
    bad = {
        'if cfg.advantage_estimator == "cast": pass': ["cast"],
        'x = name in ("rlsd", "rlrt")': ["rlrt", "rlsd"],
        'BASELINE = "grpo"\nok = m != BASELINE': ["grpo"],
        'match name:\n    case "opsd":\n        pass': ["opsd"],
        'y = cells["cast"]': ["cast"],
        'y = table.get("dr_grpo", 0)': ["dr_grpo"],
        'y = m.startswith("cast")': ["cast"],
        'y = m.endswith(("grpo_opsd", "zz"))': ["grpo_opsd"],
    }
    for source, names in bad.items():
        assert _probe(source) == names, source
    good = [
        'adv = compute_advantages("grpo", r, g, s, None, m)',
        'METHODS = ("grpo", "cast", "cast@flip=false")',
        'x = m == "cast/flip_frac_correct" or m.startswith("cast/")',
        "y = cells[view.baseline]",
        'z = {"grpo": 1}',
        'w = f("cast").get(key)',
    ]
    for source in good:
        assert _probe(source) == [], source
