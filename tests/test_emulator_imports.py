"""The emulator's import graph, read with `ast`: it plays Google's side and shares no agent code."""

from __future__ import annotations

import ast
from pathlib import Path

import batch_agent.emulator

PACKAGE = "batch_agent.emulator"
ALLOWED_AGENT_CODE = {"batch_agent.discovery"}
MODULES = sorted(Path(batch_agent.emulator.__file__).parent.glob("*.py"))


def imported(path: Path) -> set[str]:
    """Every module `path` imports (also under TYPE_CHECKING), `from X import y` as X and X.y."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: relative import"
            module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def own_modules(path: Path) -> set[str]:
    """The emulator modules `path` imports, by file stem ("state", "metadata", ...)."""
    stems = {p.stem for p in MODULES}
    found = {
        name.removeprefix(PACKAGE + ".").split(".")[0]
        for name in imported(path)
        if name.startswith(PACKAGE + ".")  # not the standard library's `logging`
    }
    return {stem for stem in found if stem in stems} - {path.stem}


def test_emulator_imports_no_agent_code() -> None:
    """Emulator modules import only the standard library, `batch_agent.discovery` and each other."""
    assert len(MODULES) > 5
    for path in MODULES:
        for name in imported(path):
            if name == "batch_agent" or not name.startswith("batch_agent."):
                continue
            allowed = (
                name == PACKAGE
                or name.startswith(PACKAGE + ".")
                or any(name == ok or name.startswith(ok + ".") for ok in ALLOWED_AGENT_CODE)
            )
            assert allowed, f"{path.name} imports {name}"


def test_http_layer_knows_the_core_only_through_the_backend_contract() -> None:
    """`http` imports of the emulator only `backend` (the protocol) and `metadata` (pure data)."""
    assert own_modules(MODULES[[p.stem for p in MODULES].index("http")]) == {"backend", "metadata"}


def test_emulator_modules_import_no_cycle() -> None:
    """No emulator module imports, however indirectly, a module that imports it back."""
    graph = {path.stem: own_modules(path) for path in MODULES}
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            module = todo.pop()
            assert module != start, f"{start} imports itself through {sorted(seen)}"
            if module not in seen:
                seen.add(module)
                todo.extend(graph[module])


def test_no_module_touches_another_objects_private_members() -> None:
    """Underscore members are used only on `self`/`cls`: modules talk through public names."""
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
                continue
            if node.attr.startswith("__") and node.attr.endswith("__"):
                continue
            owner = node.value
            assert isinstance(owner, ast.Name) and owner.id in ("self", "cls"), (
                f"{path.name}:{node.lineno}: {ast.unparse(node)}"
            )
