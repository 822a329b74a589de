"""The layers hold: no import cycle, the core never imports a concrete plugin (docs/architecture.md).

Every module of the three source folders (certframe/, plugins/ installed as
certframe.plugins, attacks/ installed as certframe.attacks) is parsed with ``ast``;
each ``import`` / ``from ... import`` anywhere in it (module level or inside a function)
is an edge to the certframe module it names (``from pkg import sub`` resolves to the
sub-module when one exists).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"certframe": ROOT / "certframe", "certframe.plugins": ROOT / "plugins",
           "certframe.attacks": ROOT / "attacks"}

MATH = ("certframe.interfaces", "certframe.core.certificate", "certframe.core.statistics", "certframe.core.sampler",
        "certframe.core.smoothing", "certframe.core.metrics", "certframe.validation")
"""The mathematics: smoothing, sampler, certification statistics, results, metrics."""


def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            if package == "certframe" and parts and parts[0] in ("plugins", "attacks"):
                continue  # symlinks of a development checkout, if any
            out[name] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("certframe"):
                target = _resolve(name)
                if target and target != module:
                    out.add(target)
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _in(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_walk_sees_every_layer():
    assert {"certframe.run.step", "certframe.cli.certify_cmd", "certframe.plugins.certifiers.segcertify",
            "certframe.attacks.suite", "certframe.core.smoothing"} <= set(MODULES)
    assert "certframe.core.smoothing" in GRAPH["certframe.run.step"]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (``[a, b, ..., a]``), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_checks_fire(tmp_path):
    """Controls: a plugin import inside a function is seen, and a cycle through a lazy import is found."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from certframe.plugins.denoisers.diffusion import resize\n"
                   "from .core.smoothing import SmoothedSegmenter\n")
    assert _imports("certframe.fake", src) == {"certframe.plugins.denoisers.diffusion", "certframe.core.smoothing"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _violations(source, forbidden) -> list[str]:
    return [f"{m} imports {n}" for m in sorted(GRAPH) if source(m) for n in sorted(GRAPH[m]) if forbidden(n)]


def test_the_core_never_imports_a_concrete_plugin():
    core = lambda m: _in(m, "certframe") and not _in(m, "certframe.plugins")  # noqa: E731
    assert _violations(core, lambda n: _in(n, "certframe.plugins")) == []


def test_plugins_reach_the_core_only_through_its_interfaces():
    """Built-in plugins never import the run layer, the commands or the attack suite."""
    assert _violations(lambda m: _in(m, "certframe.plugins"),
                       lambda n: _in(n, "certframe.run", "certframe.cli", "certframe.attacks",
                                     "certframe.run.distributed")) == []


def test_the_mathematics_imports_nothing_above_it():
    above = ("certframe.run", "certframe.cli", "certframe.attacks", "certframe.run.folder", "certframe.registry",
             "certframe.run.config", "certframe.run.distributed", "certframe.run.accelerate", "certframe.report",
             "certframe.contract")
    assert _violations(lambda m: m in MATH, lambda n: _in(n, *above)) == []


def test_commands_sit_on_top():
    """Nothing below the commands imports them; the run layer never imports the CLI."""
    assert _violations(lambda m: not _in(m, "certframe.cli") and m != "certframe.__main__",
                       lambda n: _in(n, "certframe.cli")) == []


def test_the_attack_suite_does_not_import_the_run_layer():
    assert _violations(lambda m: _in(m, "certframe.attacks"), lambda n: _in(n, "certframe.run")) == []
