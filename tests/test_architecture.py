"""The package's shape: no import cycles (function-level imports included), no private name imported across
modules, stages import each other only through ``ddoq_ray.artifacts``, no oversized module."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "ddoq_ray"
# The stage modules (registered run functions live here); they may share only the artifacts layer.
STAGE_MODULES = {"ddoq_ray.encode", "ddoq_ray.quantize", "ddoq_ray.subsets", "ddoq_ray.decode", "ddoq_ray.teacher",
                 "ddoq_ray.evaluate", "ddoq_ray.metrics"}
MAX_LINES = 420


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """Every ``ddoq_ray`` import in a file, at any depth: ``(module, imported names)``."""
    mod = _module_name(path)
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("ddoq_ray")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("ddoq_ray"):
                continue
            names = [a.name for a in node.names]
            # `from . import storage` imports a module, not a name of the package
            subs = [n for n in names if (PKG.parent / (target + "." + n).replace(".", "/")).with_suffix(".py").is_file()
                    or (PKG.parent / (target + "." + n).replace(".", "/") / "__init__.py").is_file()]
            out += [(f"{target}.{n}", []) for n in subs]
            rest = [n for n in names if n not in subs]
            if rest:
                out.append((target, rest))
    return out


def _graph() -> dict[str, set[str]]:
    files = sorted(PKG.rglob("*.py"))
    known = {_module_name(f) for f in files}
    g = {}
    for f in files:
        g[_module_name(f)] = {m for m, _ in _imports(f) if m in known and m != _module_name(f)}
    return g


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return out


def test_import_graph_has_no_cycle():
    g = _graph()
    assert "ddoq_ray.pipeline" in g and "ddoq_ray.report" in g  # the walk sees the package
    assert _cycles(g) == []


def test_cycle_detector_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_name_is_imported_across_modules():
    bad = [(_module_name(f), m, n) for f in PKG.rglob("*.py") for m, names in _imports(f) for n in names
           if n.startswith("_") and not n.startswith("__")]
    assert bad == []


def test_stages_share_only_the_artifacts_layer():
    g = _graph()
    bad = {(s, t) for s in STAGE_MODULES for t in g[s] if t in STAGE_MODULES}
    assert bad == set()


def test_no_module_is_oversized():
    sizes = {_module_name(f): len(f.read_text().splitlines()) for f in PKG.rglob("*.py")}
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}
