"""The package's layers import only downwards, and no group of modules imports itself in a circle.

Layers, lowest first: data and version (floor 0) < backbones < text < methods < model < checkpoints <
tasks < train < runner < cli. Every `from ... import` / `import` of an adaptvid module is parsed,
function-level imports included; an import from a lower floor into a higher one fails the test unless
it is in ALLOWED with its reason.
"""
import ast
from pathlib import Path

import adaptvid

PACKAGE = Path(adaptvid.__file__).parent
FLOORS = {"version": 0, "data": 0, "backbones": 1, "text": 2, "methods": 3, "model": 4, "checkpoints": 5,
          "tasks": 6, "train": 7, "runner": 8, "retrieval": 8, "cli": 9, "__main__": 9, "": 10}   # "": the package __init__
ALLOWED = {
    # VideoModel.save_pretrained / from_pretrained / push_to_hub: the transformers-style entry points to
    # the checkpoint floor, imported inside the methods when they are called; and assemble_model makes
    # sure the weight importers (registered by adaptvid.checkpoints) are loaded for a backbone that
    # carries method weights (transformers X-CLIP).
    ("model", "checkpoints"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The adaptvid modules that ``path`` imports (absolute names), at any depth of the file."""
    return _imports_of(path.read_text(), _module_name(path), path.name == "__init__.py")


def _imports_of(source: str, name: str, is_package: bool) -> set[str]:
    package = name if is_package else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
            found.update(n for n in names if n.split(".")[0] == "adaptvid")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "adaptvid")
    return found


def _floor_name(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def test_every_subpackage_has_a_floor():
    for module in _graph():
        assert _floor_name(module) in FLOORS, f"{module}: add its layer to FLOORS in tests/test_layers.py"


def test_lower_layers_never_import_higher_ones():
    wrong = []
    for module, targets in _graph().items():
        here = _floor_name(module)
        for target in targets:
            there = _floor_name(target)
            if there in FLOORS and FLOORS[there] > FLOORS[here] and (here, there) not in ALLOWED:
                wrong.append(f"{module} imports {target} ({here} is below {there})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_circles_between_modules():
    graph = _graph()
    modules = set(graph)

    def resolve(target: str):
        while target and target not in modules:   # `from .x import name`: name may be a function
            target = target.rpartition(".")[0]
        return target or None

    edges = {m: {t for t in map(resolve, graph[m]) if t and t != m and (_floor_name(m), _floor_name(t)) not in ALLOWED}
             for m in modules}
    # A package __init__ re-exports its children, and a child importing a sibling through the package
    # (`from ..data import x` inside data) is resolved to the __init__: those are not circles of logic.
    for m in modules:
        edges[m] = {t for t in edges[m] if not (m.startswith(t + ".") and graph.get(t) is not None)}
    state: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                circles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m)
    assert not circles, "\n".join(" -> ".join(c) for c in circles)


def test_the_checker_sees_function_level_and_relative_imports():
    """The parser finds what the tests above must catch: imports inside functions, at any relative level."""
    source = "import torch\ndef f():\n    from ..model import build_model\n    from . import base\n"
    found = _imports_of(source, "adaptvid.backbones.loading", is_package=False)
    assert found == {"adaptvid.model", "adaptvid.backbones.base"}
    assert _floor_name("adaptvid.model") == "model" and FLOORS["model"] > FLOORS["backbones"]
