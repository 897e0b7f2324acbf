"""The import graph: layers only point down, and no two modules import each other.

Every `import` in src/apigate counts, including lazy ones inside functions and those
under `if TYPE_CHECKING:` (a type-only cycle is still a knot a reader has to untangle).
The layers and their order are documented in docs/ARCHITECTURE.md; this test reads them
from there, so the document cannot drift from what the build enforces.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
DOC = ROOT / "docs" / "ARCHITECTURE.md"


def modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in (SRC / "apigate").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports_of(path: Path, known: dict[str, Path], module: str) -> set[str]:
    """apigate modules that `path` imports (`from pkg import mod` counts as pkg.mod)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if not base.startswith("apigate"):
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in known else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("apigate"))
    found.discard(module)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports_of(p, known, m) for m, p in known.items()}


def documented_layers() -> list[list[str]]:
    """The `layers` code block of docs/ARCHITECTURE.md: highest first, one layer per line,
    `|` between sibling groups that must not import each other."""
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"```text layers\n(.*?)```", text, re.S)
    assert block, "docs/ARCHITECTURE.md has no ```text layers block"
    layers = []
    for line in block.group(1).splitlines():
        spec = line.split(":", 1)[1] if ":" in line else line
        if spec.strip():
            layers.append([g.strip() for g in spec.split("|")])
    return layers


def owner(module: str, groups: list[tuple[int, int, str]]) -> tuple[int, int, str]:
    """(layer index, group index, prefix) of the longest documented prefix of `module`."""
    best: tuple[int, int, str] | None = None
    for layer, group, prefix in groups:
        if (module == prefix or module.startswith(prefix + ".")) and (
            best is None or len(prefix) > len(best[2])
        ):
            best = (layer, group, prefix)
    assert best is not None, f"{module} is in no layer of docs/ARCHITECTURE.md"
    return best


def test_every_module_belongs_to_a_documented_layer() -> None:
    groups = flat_groups()
    for module in graph():
        owner(module, groups)


def flat_groups() -> list[tuple[int, int, str]]:
    out = []
    for i, layer in enumerate(documented_layers()):
        for j, group in enumerate(layer):
            out.extend((i, j, prefix.strip()) for prefix in group.split(","))
    return out


def test_layers_only_import_downwards_and_siblings_stay_independent() -> None:
    groups = flat_groups()
    wrong = []
    for module, deps in sorted(graph().items()):
        m_layer, m_group, _ = owner(module, groups)
        for dep in sorted(deps):
            d_layer, d_group, _ = owner(dep, groups)
            # Layers are listed highest first: a smaller index is a higher layer.
            if d_layer < m_layer:
                wrong.append(f"{module} -> {dep} (imports a higher layer)")
            elif d_layer == m_layer and d_group != m_group:
                wrong.append(f"{module} -> {dep} (siblings must not import each other)")
    assert not wrong, "\n".join(wrong)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_between_modules() -> None:
    assert cycles(graph()) == []


@pytest.mark.parametrize(
    ("edges", "expected"),
    [
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": set()}, []),
    ],
)
def test_the_cycle_finder_finds_cycles(edges: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert cycles(edges) == expected


def test_the_checker_sees_lazy_and_type_only_imports(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from apigate.gateway.app import App\n"
        "def f():\n    from apigate.server import Server\n"
    )
    known = {"apigate.gateway.app": f, "apigate.server": f}
    assert imports_of(f, known, "apigate.x") == {"apigate.gateway.app", "apigate.server"}


def test_the_listener_knows_nothing_of_the_gateway() -> None:
    # The first rule, spelled out: http/ imports only from http/ and the base.
    for module, deps in graph().items():
        if module.startswith("apigate.http"):
            assert all(d.startswith("apigate.http") or d == "apigate" for d in deps), (module, deps)
