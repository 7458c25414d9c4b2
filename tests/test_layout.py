"""The project's shape: dependencies flow one way, scripts -> gptkit -> model.py, with no cycle inside the
package. Run alone, this file prints the import graph: python tests/test_layout.py"""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {p.stem for p in ROOT.glob("*.py")} - {"model"}


def imports(path):
    """Names of the project's modules a file imports anywhere in it (a deferred import counts too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "gptkit" and len(parts) > 1 and (ROOT / "gptkit" / f"{parts[1]}.py").exists():
                found.add(f"gptkit.{parts[1]}")
            elif parts[0] == "model" or parts[0] in SCRIPTS:
                found.add(parts[0])
    return found


def graph():
    modules = {f"gptkit.{p.stem}": p for p in (ROOT / "gptkit").glob("*.py") if p.stem != "__init__"}
    modules["model"] = ROOT / "model.py"
    return {name: imports(path) - {name} for name, path in modules.items()}


def cycle(g):
    """One import cycle of g as a list of modules, or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(g.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = "done"

    for node in sorted(g):
        if node not in state and (found := visit(node, [node])):
            return found


def test_model_py_imports_nothing_of_the_project():
    assert graph()["model"] == set()


def test_the_package_imports_no_script():
    wrong = {name: deps & SCRIPTS for name, deps in graph().items() if deps & SCRIPTS}
    assert not wrong, f"package modules import root scripts: {wrong}"


def test_the_package_has_no_import_cycle():
    assert cycle(graph()) is None, " -> ".join(cycle(graph()))


if __name__ == "__main__":
    g = graph()
    for name in sorted(g):
        print(f"{name:24} -> {', '.join(sorted(g[name])) or '(nothing of the project)'}")
    found = cycle(g)
    print("cycle: " + " -> ".join(found) if found else "no cycle; nothing in the package imports a script")
    sys.exit(1 if found else 0)
