"""Label hierarchies: a tree over a data set's classes, as data, validated up front.

A hierarchy groups the fine classes of a data set into nested coarser nodes, e.g. the
BraTS regions (whole tumour = {edema, tumour core}, tumour core = {necrotic core,
enhancing tumour}) or a liver-tumour task (organ = {organ tissue, tumour}). It is
written as a table (TOML or JSON file, or a dict) with

* ``root``: the top-level names (classes or groups), left to right;
* ``groups``: group name -> its members (classes or other groups, at least two);
* ``classes`` (optional): the fine classes in label order; when given they must equal
  the data set's ``class_names``;
* ``name`` (optional): a label for reports.

::

    # examples/hierarchies/brats.toml
    name = "brats-regions"
    root = ["background", "whole tumour"]

    [groups]
    "whole tumour" = ["edema", "tumour core"]
    "tumour core" = ["necrotic core", "enhancing tumour"]

Every class of the data set must appear exactly once (under ``root`` or in one group),
every group exactly once, and no group may contain itself. :func:`resolve_hierarchy`
checks all of it before anything is sampled and raises one :class:`HierarchyError`
whose first line names the problem.

**Levels.** A node's height is 0 for a class and 1 + the largest height of its members
for a group. Level ``l`` (``0 .. L - 1``, ``L`` = 1 + the largest height) partitions the
classes into the nodes ``v`` with ``height(v) <= l < height(parent(v))`` (the top-level
nodes stay until the last level): level 0 is the fine classes, and each level merges
some nodes of the one before, so the levels nest. For the BraTS file above: level 0 =
{background, necrotic core, edema, enhancing tumour}, level 1 = {background, edema,
tumour core}, level 2 = {background, whole tumour}. A node may span several levels
(background spans all three, edema levels 0 and 1).

**Node ids.** Nodes are numbered classes first (id = label), then groups in the order
of ``groups``; :attr:`LabelHierarchy.level_map` ``[L, K]`` gives the node of each class
at each level. Certificates store node ids per pixel (-1 = abstain).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

KEYS = ("name", "classes", "root", "groups")


class HierarchyError(ValueError):
    """A label hierarchy that cannot be used; the first line of the message names the problem."""


@dataclass(frozen=True, eq=False)
class LabelHierarchy:
    """A validated tree over ``class_names`` (build it with :func:`resolve_hierarchy`).

    class_names: the fine classes, index = label (K of them).
    root: the top-level node names. groups: group name -> member names (declaration order).
    name: a label for reports.
    Derived (read-only): ``nodes`` (names; ids 0..K-1 are the classes, then the groups),
    ``parent`` (node id -> parent id, -1 under root), ``height`` (per node), ``num_levels``
    (L), ``level_map`` (int64 ``[L, K]``: node id of each class at each level), ``leaves``
    (per node, the sorted class labels it holds).
    """

    class_names: tuple[str, ...]
    root: tuple[str, ...]
    groups: dict[str, tuple[str, ...]]
    name: str = ""
    nodes: tuple[str, ...] = field(init=False)
    parent: tuple[int, ...] = field(init=False)
    height: tuple[int, ...] = field(init=False)
    leaves: tuple[tuple[int, ...], ...] = field(init=False)
    level_map: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        K = len(self.class_names)
        nodes = tuple(self.class_names) + tuple(self.groups)
        index = {name: i for i, name in enumerate(nodes)}
        parent = [-1] * len(nodes)
        for g, members in self.groups.items():
            for m in members:
                parent[index[m]] = index[g]
        height = [0] * len(nodes)
        leaves: list[tuple[int, ...]] = [(c,) for c in range(K)] + [()] * len(self.groups)

        def visit(i: int) -> None:
            if i < K or leaves[i]:
                return
            kids = [index[m] for m in self.groups[nodes[i]]]
            for j in kids:
                visit(j)
            height[i] = 1 + max(height[j] for j in kids)
            leaves[i] = tuple(sorted(c for j in kids for c in leaves[j]))

        for i in range(K, len(nodes)):
            visit(i)
        L = 1 + max(height[index[r]] for r in self.root)
        level_map = np.empty((L, K), dtype=np.int64)
        for c in range(K):
            chain = [c]
            while parent[chain[-1]] >= 0:
                chain.append(parent[chain[-1]])
            for level in range(L):
                level_map[level, c] = [v for v in chain if height[v] <= level][-1]
        level_map.setflags(write=False)
        for key, value in (("nodes", nodes), ("parent", tuple(parent)), ("height", tuple(height)),
                           ("leaves", tuple(leaves)), ("level_map", level_map)):
            object.__setattr__(self, key, value)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_levels(self) -> int:
        return int(self.level_map.shape[0])

    def node_id(self, name: str) -> int:
        return self.nodes.index(name)

    def level_nodes(self, level: int) -> list[int]:
        """The node ids of one level, in order of their smallest class label."""
        return list(dict.fromkeys(int(v) for v in self.level_map[level]))

    def node_levels(self, node: int) -> range:
        """The levels at which ``node`` is a node of the partition (``height .. top``)."""
        top = max(level for level in range(self.num_levels) if node in self.level_map[level])
        return range(self.height[node], int(top) + 1)

    def level_table(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """:attr:`level_map` as an int64 tensor ``[L, K]`` on ``device`` (a copy)."""
        return torch.tensor(np.array(self.level_map), dtype=torch.int64, device=device)

    def to_level(self, labels: torch.Tensor, level: int) -> torch.Tensor:
        """Fine labels ``[*S]`` -> node ids at ``level`` (negative labels, ABSTAIN, stay -1)."""
        table = self.level_table(labels.device)[level]
        return torch.where(labels >= 0, table[labels.clamp(min=0)], torch.full_like(labels, -1))

    def members(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """bool ``[N, K]``: which classes each node holds (N = number of nodes)."""
        out = torch.zeros((len(self.nodes), self.num_classes), dtype=torch.bool, device=device)
        for i, leaves in enumerate(self.leaves):
            out[i, list(leaves)] = True
        return out

    def as_dict(self) -> dict:
        """The hierarchy as the table it was read from (JSON-able, with ``classes``)."""
        out: dict[str, Any] = {"classes": list(self.class_names), "root": list(self.root),
                               "groups": {g: list(m) for g, m in self.groups.items()}}
        if self.name:
            out = {"name": self.name, **out}
        return out

    def describe(self) -> str:
        """One line per level: ``level 1: background | organ {organ tissue, tumour}``."""
        lines = []
        for level in range(self.num_levels):
            parts = []
            for v in self.level_nodes(level):
                names = [self.class_names[c] for c in self.leaves[v]]
                parts.append(self.nodes[v] if len(names) == 1 else f"{self.nodes[v]} {{{', '.join(names)}}}")
            lines.append(f"level {level}: " + " | ".join(parts))
        return "\n".join(lines)


def read_hierarchy(source: Any) -> dict:
    """The raw table of a hierarchy from a dict, a ``.toml`` / ``.json`` file path, or a JSON string."""
    if isinstance(source, LabelHierarchy):
        return source.as_dict()
    if isinstance(source, Mapping):
        table = dict(source)
    elif isinstance(source, (str, Path)):
        text = str(source).strip()
        if text.startswith("{"):
            try:
                table = json.loads(text)
            except json.JSONDecodeError as err:
                raise HierarchyError(f"the hierarchy is not valid JSON: {err}") from None
        else:
            path = Path(text).expanduser()
            if not path.is_file():
                raise HierarchyError(f"hierarchy file {str(path)!r} does not exist (expected a .toml or "
                                     f".json file, or a JSON table)")
            if path.suffix.lower() == ".toml":
                import tomllib

                try:
                    table = tomllib.loads(path.read_text())
                except tomllib.TOMLDecodeError as err:
                    raise HierarchyError(f"hierarchy file {str(path)!r} is not valid TOML: {err}") from None
            elif path.suffix.lower() == ".json":
                try:
                    table = json.loads(path.read_text())
                except json.JSONDecodeError as err:
                    raise HierarchyError(f"hierarchy file {str(path)!r} is not valid JSON: {err}") from None
            else:
                raise HierarchyError(f"hierarchy file {str(path)!r} must end in .toml or .json, "
                                     f"got {path.suffix or 'no suffix'!r}")
    else:
        raise HierarchyError(f"a hierarchy is a table (dict), a .toml / .json file or a JSON string, "
                             f"got {type(source).__name__}")
    if not isinstance(table, dict):
        raise HierarchyError(f"a hierarchy is a table with 'root' and 'groups', got {type(table).__name__}")
    if set(table) == {"hierarchy"} and isinstance(table["hierarchy"], dict):
        table = dict(table["hierarchy"])
    return table


def _names(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise HierarchyError(f"hierarchy: {where} must be a list of names (non-empty strings), got {value!r}")
    return tuple(value)


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names)


def resolve_hierarchy(source: Any, class_names: Sequence[str] | None = None) -> LabelHierarchy:
    """Validate a hierarchy (see :func:`read_hierarchy` for ``source``) against ``class_names``.

    class_names: the data set's classes in label order; None takes the table's own
    ``classes`` (then required). Raises :class:`HierarchyError` naming the first problem:
    unknown keys, an unknown name, a cycle, a name listed twice, a class missing, a group
    never reached from ``root``, a group with fewer than two members, a group named like a
    class, or a tree with nothing to relax to (a binary task; one node holding every class).
    """
    table = read_hierarchy(source)
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise HierarchyError(f"hierarchy: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(KEYS))}")
    name = table.get("name", "")
    if not isinstance(name, str):
        raise HierarchyError(f"hierarchy: name must be a string, got {name!r}")
    listed = _names(table["classes"], "classes") if table.get("classes") is not None else None
    if class_names is None:
        if listed is None:
            raise HierarchyError("hierarchy: the classes are not known: list them under 'classes' (label order) "
                                 "or resolve the hierarchy against a data set")
        classes = listed
    else:
        classes = tuple(str(c) for c in class_names)
        if listed is not None and listed != classes:
            raise HierarchyError(f"hierarchy: its classes [{_quoted(listed)}] differ from the data set's "
                                 f"[{_quoted(classes)}] (same names, same label order)")
    if len(set(classes)) != len(classes):
        raise HierarchyError(f"hierarchy: the class names [{_quoted(classes)}] are not distinct")
    if "root" not in table:
        raise HierarchyError("hierarchy: 'root' is missing (the list of top-level classes and groups)")
    root = _names(table["root"], "root")
    raw_groups = table.get("groups", {}) or {}
    if not isinstance(raw_groups, dict):
        raise HierarchyError(f"hierarchy: groups must be a table (group name -> members), got {raw_groups!r}")
    groups = {str(g): _names(m, f"group {g!r}") for g, m in raw_groups.items()}
    if len(classes) == 2:
        raise HierarchyError(f"hierarchy: a binary task (2 classes: {_quoted(classes)}) has nothing to relax to: "
                             f"the only coarser node would hold every class and certify nothing; use a flat "
                             f"certifier (segcertify)")
    both = [g for g in groups if g in classes]
    if both:
        raise HierarchyError(f"hierarchy: {both[0]!r} is both a class and a group name")
    known = set(classes) | set(groups)
    for where, members in [("root", root), *((f"group {g!r}", m) for g, m in groups.items())]:
        for m in members:
            if m not in known:
                raise HierarchyError(f"hierarchy: unknown name {m!r} in {where}: neither a class of the data set "
                                     f"({_quoted(classes)}) nor a group ({_quoted(groups) or 'none'})")
    _check_cycles(groups)
    seen: dict[str, str] = {}
    for where, members in [("root", root), *((f"group {g!r}", m) for g, m in groups.items())]:
        for m in members:
            if m in seen:
                kind = "class" if m in classes else "group"
                place = f"in {where}, twice" if seen[m] == where else f"in {seen[m]} and in {where}"
                raise HierarchyError(f"hierarchy: {kind} {m!r} is listed twice ({place}); every class and "
                                     f"group must appear exactly once")
            seen[m] = where
    missing = [c for c in classes if c not in seen]
    if missing:
        what = f"class {missing[0]!r} is" if len(missing) == 1 else f"classes {_quoted(missing)} are"
        raise HierarchyError(f"hierarchy: {what} missing (every class of the data set must appear exactly "
                             f"once, under root or in a group)")
    reached = _reached(root, groups)
    orphan = [g for g in groups if g not in reached]
    if orphan:
        raise HierarchyError(f"hierarchy: group {orphan[0]!r} is not reachable from root (list it under root "
                             f"or in a group)")
    small = [g for g, m in groups.items() if len(m) < 2]
    if small:
        g = small[0]
        raise HierarchyError(f"hierarchy: group {g!r} has {len(groups[g])} member ({_quoted(groups[g])}); a group "
                             f"must join at least two")
    if len(root) < 2:
        raise HierarchyError(f"hierarchy: root has one node ({root[0]!r}) holding every class: it would certify "
                             f"nothing; list the top-level nodes under root instead")
    if not groups:
        raise HierarchyError(f"hierarchy: no group joins two classes, so there is nothing to relax to "
                             f"(classes {_quoted(classes)}); use a flat certifier (segcertify)")
    return LabelHierarchy(class_names=classes, root=root, groups=groups, name=name)


def _check_cycles(groups: Mapping[str, Sequence[str]]) -> None:
    state: dict[str, int] = {}   # 1 on the current path, 2 done

    def walk(g: str, path: list[str]) -> None:
        state[g] = 1
        for m in groups[g]:
            if m not in groups:
                continue
            if state.get(m) == 1:
                cycle = path[path.index(m):] + [m]
                raise HierarchyError(f"hierarchy: the groups form a cycle: {' -> '.join(cycle)} (a group "
                                     f"cannot contain itself)")
            if state.get(m) != 2:
                walk(m, path + [m])
        state[g] = 2

    for g in groups:
        if g not in state:
            walk(g, [g])


def _reached(root: Sequence[str], groups: Mapping[str, Sequence[str]]) -> set[str]:
    out, todo = set(), list(root)
    while todo:
        v = todo.pop()
        if v in out:
            continue
        out.add(v)
        todo.extend(groups.get(v, ()))
    return out


__all__ = ["HierarchyError", "LabelHierarchy", "read_hierarchy", "resolve_hierarchy"]
