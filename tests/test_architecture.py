"""The package map holds (docs/architecture.md, "Package map"): no import cycle, and every import
between two packages is one the map allows (``ALLOWED``), so the maths imports nothing above it, the
core never imports a concrete plugin, plugins and the attack suite never reach the run layer, and
nothing imports the commands.

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


def unit(module: str) -> str:
    """The package a module belongs to in the map: ``certframe.core.sampler`` -> ``certframe.core``,
    a loose module of the root (``certframe.registry``) is its own unit, the root ``certframe`` too."""
    parts = module.split(".")
    return ".".join(parts[:2])


CONTRACTS = {"certframe.interfaces", "certframe.validation", "certframe.hookspecs"}
BASICS = {"certframe.device", "certframe.files"}
FOUNDATION = CONTRACTS | BASICS | {"certframe.core", "certframe"}

ALLOWED: dict[str, set[str]] = {
    # the contracts and the mathematics lean on each other (interfaces use the statistics' checks,
    # the maths implements the interfaces); nothing else
    "certframe.validation": set(),
    "certframe.device": set(),
    "certframe.files": set(),
    "certframe.hookspecs": set(),
    "certframe.interfaces": {"certframe.core", "certframe.validation"},
    "certframe.core": {"certframe.interfaces", "certframe.validation"},
    "certframe": {"certframe.core", "certframe.interfaces", "certframe.hookspecs"},   # the public names
    # services over the foundation
    "certframe.registry": {"certframe.hookspecs"},
    "certframe.checkpoint": {"certframe.files"},
    "certframe.quality": FOUNDATION | {"certframe.registry"},
    "certframe.training": FOUNDATION | {"certframe.registry", "certframe.checkpoint", "certframe.quality"},
    "certframe.contract": FOUNDATION | {"certframe.registry"},
    # plugins and the attack suite: the foundation, never the run layer, the commands or each other
    "certframe.plugins": FOUNDATION | {"certframe.checkpoint", "certframe.training", "certframe.report"},
    "certframe.attacks": FOUNDATION,
    # the run layer, reports and studies
    "certframe.run": FOUNDATION | {"certframe.registry", "certframe.checkpoint", "certframe.quality",
                                   "certframe.training", "certframe.attacks"},
    "certframe.report": FOUNDATION | {"certframe.registry", "certframe.run"},
    "certframe.study": FOUNDATION | {"certframe.registry", "certframe.checkpoint", "certframe.quality",
                                     "certframe.training", "certframe.attacks", "certframe.run", "certframe.report"},
    # the commands sit on top: they may import anything below them, nothing imports them
    "certframe.cli": FOUNDATION | {"certframe.registry", "certframe.checkpoint", "certframe.quality",
                                   "certframe.training", "certframe.attacks", "certframe.run", "certframe.report",
                                   "certframe.study", "certframe.contract"},
    "certframe.__main__": {"certframe.cli"},
}
"""Which package may import which (docs/architecture.md, "Package map"). An edge between two modules
of the same package is always allowed; every other edge must be listed here."""


def map_violations(graph: dict[str, set[str]], allowed: dict[str, set[str]] = ALLOWED) -> list[str]:
    """Every import edge of ``graph`` between two packages that ``allowed`` does not list, and every
    module whose package the map does not know."""
    out = []
    for m in sorted(graph):
        a = unit(m)
        if a not in allowed:
            out.append(f"{m}: package {a} is not in the map")
            continue
        out += [f"{m} imports {n}" for n in sorted(graph[m]) if unit(n) != a and unit(n) not in allowed[a]]
    return out


def test_the_walk_sees_every_layer():
    assert {"certframe.run.step", "certframe.cli.certify_cmd", "certframe.plugins.certifiers.segcertify",
            "certframe.attacks.suite", "certframe.core.smoothing", "certframe.training.segmenter"} <= set(MODULES)
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


def test_every_import_follows_the_package_map():
    assert map_violations(GRAPH) == []


def test_the_map_fires_on_a_forbidden_import(tmp_path):
    """Controls: the maths importing the run layer, a plugin importing the commands, the attack suite
    importing the run layer and an unknown package each fire; an import inside a package does not."""
    graph = {"certframe.core.smoothing": {"certframe.run.folder", "certframe.core.sampler"},
             "certframe.plugins.segmenters.monai": {"certframe.cli.errors"},
             "certframe.attacks.suite": {"certframe.run.step"},
             "certframe.newthing.x": set()}
    assert map_violations(graph) == ["certframe.attacks.suite imports certframe.run.step",
                                     "certframe.core.smoothing imports certframe.run.folder",
                                     "certframe.newthing.x: package certframe.newthing is not in the map",
                                     "certframe.plugins.segmenters.monai imports certframe.cli.errors"]
    src = tmp_path / "m.py"
    src.write_text("from certframe.run.folder import RunFolder\n")
    assert map_violations({"certframe.core.fake": _imports("certframe.core.fake", src)}) == [
        "certframe.core.fake imports certframe.run.folder"]


def test_the_map_keeps_the_old_layer_rules():
    """What the map implies, spelled out: the core never imports a concrete plugin, the maths imports
    nothing above it, nothing imports the commands, plugins and attacks never reach the run layer."""
    above_maths = {"certframe.run", "certframe.cli", "certframe.attacks", "certframe.registry", "certframe.report",
                   "certframe.contract", "certframe.training", "certframe.quality", "certframe.study",
                   "certframe.plugins", "certframe.files", "certframe.checkpoint"}
    assert not ALLOWED["certframe.core"] & above_maths
    assert all("certframe.plugins" not in v for k, v in ALLOWED.items() if k != "certframe.plugins")
    assert all("certframe.cli" not in v for k, v in ALLOWED.items() if k != "certframe.__main__")
    assert not {"certframe.run", "certframe.cli"} & (ALLOWED["certframe.plugins"] | ALLOWED["certframe.attacks"])


def traced_files_of_one_image(tmp_path) -> list[str]:
    """The source files of certframe, its plugins and its attacks whose functions run while the second
    image of a four-image ``certframe certify`` is certified: in the loop's thread from the step's start
    for that image to its start for the next, and everything the writer and prefetch threads run."""
    import sys
    import threading
    import time

    from click.testing import CliRunner

    from certframe.cli import main

    roots = {folder.resolve(): package for package, folder in FOLDERS.items()}
    events, starts = [], []
    main_thread = threading.get_ident()

    def profile(frame, event, arg):
        if event != "call":
            return
        path = frame.f_code.co_filename
        if any(path.startswith(str(root)) for root in roots):
            now = time.perf_counter()
            events.append((now, path, threading.get_ident() == main_thread))
            if path.endswith("run/step.py") and frame.f_code.co_name == "__call__":
                starts.append(now)

    command = ["certify", "--dataset", "synthetic-lung", "--dataset-option", "size=32", "--segmenter", "monai",
               "--segmenter-option", "weights=synthetic-lung", "--sigma", "0.25", "--n0", "10", "-n", "20",
               "--seed", "0", "--limit", "4", "--device", "cpu", "--precision", "fp32", "--quiet",
               "--output", str(tmp_path / "run")]
    threading.setprofile(profile)
    sys.setprofile(profile)
    try:
        result = CliRunner().invoke(main, command)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    assert result.exit_code == 0, result.output
    assert len(starts) == 4
    # the loop's thread within the window; the other threads (the writer, the image prefetch) do per-image
    # work only, at their own pace, so all of theirs counts (a busy machine may delay the writer past the window)
    return sorted({str(Path(p).resolve().relative_to(ROOT)) for t, p, in_loop in events
                   if not in_loop or starts[1] <= t < starts[2]})


def documented_path() -> list[str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("<!-- path-of-one-image -->", 1)[1].split("<!-- end -->", 1)[0]
    return sorted(word for word in block.split() if word.endswith(".py"))


def test_the_path_of_one_image_is_counted_honestly(tmp_path):
    """docs/architecture.md lists exactly the files whose code runs for one image; the trace's control:
    the step, the sampler, the certifier and the writer thread are in it."""
    traced = traced_files_of_one_image(tmp_path)
    assert {"certframe/run/step.py", "certframe/core/sampler.py", "plugins/certifiers/segcertify.py",
            "certframe/run/writer.py"} <= set(traced)
    assert documented_path() == traced
