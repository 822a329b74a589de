"""Label hierarchies (certframe/core/hierarchy.py): the format, the levels, and every bad input's one error."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from certframe.cli import main
from certframe.core.hierarchy import HierarchyError, resolve_hierarchy

TUMOUR = ("background", "organ tissue", "tumour")
ORGAN = {"root": ["background", "organ"], "groups": {"organ": ["organ tissue", "tumour"]}}
BRATS_CLASSES = ("background", "necrotic core", "edema", "enhancing tumour")
BRATS = {"root": ["background", "whole tumour"],
         "groups": {"whole tumour": ["edema", "tumour core"], "tumour core": ["necrotic core", "enhancing tumour"]}}


def test_levels_of_a_three_level_tree_nest():
    h = resolve_hierarchy(BRATS, BRATS_CLASSES)
    assert h.nodes == BRATS_CLASSES + ("whole tumour", "tumour core")
    assert h.height == (0, 0, 0, 0, 2, 1) and h.num_levels == 3
    assert h.level_map.tolist() == [[0, 1, 2, 3],     # the fine classes
                                    [0, 5, 2, 5],     # background | tumour core {NCR, ET} | edema
                                    [0, 4, 4, 4]]     # background | whole tumour
    assert h.leaves[4] == (1, 2, 3) and h.leaves[5] == (1, 3)
    assert [list(h.node_levels(v)) for v in range(6)] == [[0, 1, 2], [0], [0, 1], [0], [2], [1]]
    # nesting: every node of level l lies inside one node of level l + 1
    for level in range(h.num_levels - 1):
        for v in h.level_nodes(level):
            parents = {int(h.level_map[level + 1][c]) for c in h.leaves[v]}
            assert len(parents) == 1
    assert h.describe().splitlines()[2] == "level 2: background | whole tumour {necrotic core, edema, enhancing tumour}"
    labels = torch.tensor([[0, 1, 2, 3, -1]])
    assert h.to_level(labels, 1).tolist() == [[0, 5, 2, 5, -1]]
    assert h.members()[5].tolist() == [False, True, False, True]


def test_files_toml_json_and_the_bundled_examples(tmp_path):
    toml = tmp_path / "h.toml"
    toml.write_text('root = ["background", "organ"]\n[groups]\norgan = ["organ tissue", "tumour"]\n')
    js = tmp_path / "h.json"
    js.write_text(json.dumps(ORGAN))
    for source in (toml, str(js), json.dumps(ORGAN), ORGAN, {"hierarchy": ORGAN}):
        assert resolve_hierarchy(source, TUMOUR).level_map.tolist() == [[0, 1, 2], [0, 3, 3]]
    brats = resolve_hierarchy("examples/hierarchies/brats.toml")      # lists its classes itself
    assert brats.class_names == BRATS_CLASSES and brats.num_levels == 3 and brats.name == "brats-regions"
    assert resolve_hierarchy("examples/hierarchies/synthetic-tumour.toml", TUMOUR).num_levels == 2
    assert resolve_hierarchy("examples/hierarchies/synthetic-volume.json",
                             ("background", "liver", "kidneys")).num_levels == 2
    assert resolve_hierarchy(brats.as_dict()).level_map.tolist() == brats.level_map.tolist()


BAD = [
    ("missing", {"root": ["background", "organ"], "groups": {"organ": ["organ tissue"]}}, TUMOUR,
     "hierarchy: class 'tumour' is missing (every class of the data set must appear exactly once, under root "
     "or in a group)"),
    ("twice", {"root": ["background", "organ", "tumour"], "groups": {"organ": ["organ tissue", "tumour"]}}, TUMOUR,
     "hierarchy: class 'tumour' is listed twice (in root and in group 'organ'); every class and group must "
     "appear exactly once"),
    ("cycle", {"root": ["background", "organ"], "groups": {"organ": ["organ tissue", "lesion"],
                                                           "lesion": ["tumour", "organ"]}}, TUMOUR,
     "hierarchy: the groups form a cycle: organ -> lesion -> organ (a group cannot contain itself)"),
    ("unknown", {"root": ["background", "organ"], "groups": {"organ": ["organ tissue", "tumor"]}}, TUMOUR,
     "hierarchy: unknown name 'tumor' in group 'organ': neither a class of the data set ('background', "
     "'organ tissue', 'tumour') nor a group ('organ')"),
    ("binary", {"root": ["background", "lungs"]}, ("background", "lungs"),
     "hierarchy: a binary task (2 classes: 'background', 'lungs') has nothing to relax to: the only coarser "
     "node would hold every class and certify nothing; use a flat certifier (segcertify)"),
    ("no group", {"root": list(TUMOUR)}, TUMOUR,
     "hierarchy: no group joins two classes, so there is nothing to relax to (classes 'background', "
     "'organ tissue', 'tumour'); use a flat certifier (segcertify)"),
    ("one root", {"root": ["all"], "groups": {"all": list(TUMOUR)}}, TUMOUR,
     "hierarchy: root has one node ('all') holding every class: it would certify nothing; list the top-level "
     "nodes under root instead"),
    ("one member", {"root": ["background", "organ", "tumour"], "groups": {"organ": ["organ tissue"]}}, TUMOUR,
     "hierarchy: group 'organ' has 1 member ('organ tissue'); a group must join at least two"),
    ("orphan", {"root": ["background", "g1"], "groups": {"g1": ["a", "b"], "g2": ["c", "d"]}},
     ("background", "a", "b", "c", "d"),
     "hierarchy: group 'g2' is not reachable from root (list it under root or in a group)"),
    ("key", {**ORGAN, "levels": 2}, TUMOUR, "hierarchy: unknown key 'levels'; valid keys: classes, groups, name, root"),
    ("classes", {**ORGAN, "classes": ["background", "tumour", "organ tissue"]}, TUMOUR,
     "hierarchy: its classes ['background', 'tumour', 'organ tissue'] differ from the data set's ['background', "
     "'organ tissue', 'tumour'] (same names, same label order)"),
    ("class as group", {"root": ["background", "tumour"], "groups": {"tumour": ["organ tissue", "x"]}}, TUMOUR,
     "hierarchy: 'tumour' is both a class and a group name"),
]


@pytest.mark.parametrize("case, table, classes, line", BAD, ids=[b[0] for b in BAD])
def test_a_bad_hierarchy_is_one_error_naming_the_problem(case, table, classes, line):
    with pytest.raises(HierarchyError) as err:
        resolve_hierarchy(table, classes)
    assert str(err.value).splitlines()[0] == line


def test_a_missing_or_unreadable_file_is_named(tmp_path):
    with pytest.raises(HierarchyError, match="hierarchy file '.*nope.toml' does not exist"):
        resolve_hierarchy(tmp_path / "nope.toml", TUMOUR)
    bad = tmp_path / "bad.toml"
    bad.write_text("root = [\n")
    with pytest.raises(HierarchyError, match="is not valid TOML"):
        resolve_hierarchy(bad, TUMOUR)
    (tmp_path / "h.yaml").write_text("x")
    with pytest.raises(HierarchyError, match="must end in .toml or .json"):
        resolve_hierarchy(tmp_path / "h.yaml", TUMOUR)


# --- the same errors from the command line, before anything is sampled or written

RUN = ["certify", "--dataset", "synthetic-tumour", "--dataset-option", "count=1", "--dataset-option", "size=32",
       "--segmenter-option", "weights=synthetic-tumour-noise0.25", "--certifier", "hierarchical",
       "--n0", "2", "-n", "30", "--device", "cpu"]


@pytest.mark.parametrize("case, table, classes, line", [b for b in BAD if b[2] == TUMOUR][:4],
                         ids=[b[0] for b in BAD if b[2] == TUMOUR][:4])
def test_certify_refuses_a_bad_hierarchy_before_sampling(tmp_path, case, table, classes, line):
    path = tmp_path / "h.json"
    path.write_text(json.dumps(table))
    out = tmp_path / "run"
    r = CliRunner().invoke(main, [*RUN, "--certifier-option", f"hierarchy={path}", "--output", str(out)])
    assert r.exit_code == 1, r.output
    assert r.output.strip().splitlines()[0] == f"Error: {line}"
    assert not out.exists()


def test_certify_refuses_a_binary_task_and_a_data_set_without_hierarchy(tmp_path):
    lung = ["certify", "--dataset", "synthetic-lung", "--dataset-option", "count=1", "--dataset-option", "size=32",
            "--segmenter-option", "weights=synthetic-lung-noise0.25", "--certifier", "hierarchical", "--n0", "2",
            "-n", "30", "--device", "cpu", "--output", str(tmp_path / "a")]
    r = CliRunner().invoke(main, lung)
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[0] == f"Error: {BAD[4][3]}"
    assert not (tmp_path / "a").exists()


def test_a_data_set_without_a_default_needs_the_option():
    from certframe.plugins.certifiers.hierarchical import HierarchicalSegCertify

    with pytest.raises(HierarchyError) as err:
        HierarchicalSegCertify().bind(TUMOUR, None, "the data set 'folder'")
    assert str(err.value) == ("the hierarchical certifier needs a label hierarchy and the data set 'folder' declares "
                              "none: give one with --certifier-option hierarchy=FILE (.toml or .json; see "
                              "examples/hierarchies/)")
    with pytest.raises(HierarchyError, match="does not know the data set's classes yet"):
        HierarchicalSegCertify(ORGAN).certify(None, None)
