"""c2t.instruct.build: what users rely on — splits without leakage, determinism, both record formats agree,
answers score back, and a manifest that says how the dataset was made."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import yaml
from sklearn.neighbors import NearestNeighbors

import c2t.instruct
from c2t._manifest import file_hash, vocabulary_hash
from c2t.instruct import TASKS, build, load, load_templates, read_info, score, toy_adata

ALL_TASKS = [
    "cell_type",
    "cell_type_mc",
    {"task": "generation", "tissue_key": "tissue", "condition_key": "condition"},
    {"task": "unconditional", "weight": 0.5},
    {"task": "metadata", "key": "donor"},
    {"task": "drug_response", "response_key": "response", "drug_key": "treatment"},
    {"task": "perturbation", "perturbation_key": "target", "match_key": "bio_rep"},
    {"task": "multi_cell", "key": "condition", "sample_key": "sample_id", "cells_per_example": 3},
    {"task": "spatial", "k": 4},
]


TEMPLATES = {name: load_templates(name, provided=cls.fields, answer_provided=cls.answer_fields) for name, cls in TASKS.items()}


@pytest.fixture(scope="module")
def toy():
    return toy_adata(240)


@pytest.fixture(scope="module")
def toy_path(toy, tmp_path_factory):
    path = tmp_path_factory.mktemp("toy") / "toy.h5ad"
    toy.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def mixture(toy_path, tmp_path_factory):
    """Every task at once, built from the .h5ad path."""
    out = tmp_path_factory.mktemp("mix") / "mixture"
    dsd = build(toy_path, out=out, tasks=ALL_TASKS, top_k=10, seed=3, organism="human")
    return out, dsd


def rows(dsd, split=None):
    splits = [split] if split else list(dsd)
    return [r for s in splits for r in dsd[s].to_list()]


def test_splits_and_columns(mixture):
    out, dsd = mixture
    assert list(dsd) == ["train", "validation", "test"]
    assert dsd["train"].column_names == ["prompt", "completion", "messages", "task", "template_id", "cell_id", "label",
                                         "label_key", "control_cell_id"]
    assert {r["task"] for r in rows(dsd, "train")} == {t if isinstance(t, str) else t["task"] for t in ALL_TASKS}
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.yaml", "dataset_dict.json", "examples.jsonl",
                                                     "manifest.json", "test", "train", "validation", "vocabulary.txt"]
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # no staging left behind


def test_prompt_completion_and_messages_agree(mixture):
    for r in rows(mixture[1]):
        assert r["messages"] == [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]
        assert r["prompt"].endswith("\n") and r["completion"] and not r["completion"].endswith("\n")
        assert "{" not in r["prompt"].replace("{{", "")  # every placeholder filled


def test_every_template_used_and_recorded(mixture):
    out, dsd = mixture
    manifest = read_info(out)
    used = Counter(r["template_id"] for r in rows(dsd))
    for entry in manifest["tasks"]:
        ids = entry["templates"]["template_ids"]
        assert ids == [t.id for t in TEMPLATES[entry["task"]].templates]
        if sum(entry["examples"].values()) >= 2 * len(ids):
            assert all(used[i] > 0 for i in ids), entry["task"]
        counts = np.array([c for split in entry["template_counts"].values() for c in split.values()])
        assert counts.sum() == sum(entry["examples"].values())
    assert sum(used.values()) == sum(manifest["splits"].values())


def test_each_cell_lives_in_one_split(mixture, toy):
    _, dsd = mixture
    seen = {}
    for split in dsd:
        ids = set()
        for r in rows(dsd, split):
            ids.update(r["cell_id"].split(";"))
            if r["control_cell_id"]:
                ids.add(r["control_cell_id"])
        seen[split] = ids
    assert not seen["train"] & seen["test"] and not seen["train"] & seen["validation"] and not seen["validation"] & seen["test"]


def test_stratification_keeps_label_proportions(mixture, toy):
    out, dsd = mixture
    split = read_info(out)["split"]
    assert split["stratify"] == "cell_type"
    totals = toy.obs["cell_type"].value_counts()
    for label, n in totals.items():
        for name, fraction in split["fractions"].items():
            assert abs(split["label_counts"][name].get(label, 0) - fraction * n) <= 1, (label, name)
    cell_type = Counter((s, r["label"]) for s in dsd for r in rows(dsd, s) if r["task"] == "cell_type")
    for label, n in totals.items():
        assert abs(cell_type[("test", label)] - 0.1 * n) <= 1


def test_answers_score_back_perfectly(mixture):
    out, dsd = mixture
    records = rows(dsd)
    result = score(records, [r["completion"] for r in records], vocabulary=out)
    for task, metrics in result["per_task"].items():
        if "accuracy" in metrics:
            assert metrics["accuracy"] == 1.0, task
        else:
            assert metrics["valid_gene_rate"] == metrics["overlap"] == metrics["precision"] == 1.0, task
    wrong = score(records[:50], ["nonsense"] * 50, vocabulary=out)["per_task"]
    assert all(m.get("accuracy", 0) == 0 and m.get("overlap", 0) == 0 for m in wrong.values())


def test_manifest_records_how_it_was_made(mixture, toy_path):
    out, dsd = mixture
    m = read_info(out)
    assert m["kind"] == "instruction_dataset" and m["seed"] == 3 and m["top_k"] == 10
    assert m["source"]["sha256"] == file_hash(toy_path)
    vocabulary = (out / "vocabulary.txt").read_text().split("\n")[:-1]
    assert m["vocabulary_hash"] == vocabulary_hash(vocabulary) == vocabulary_hash(toy_adata(240).var_names)
    assert m["splits"] == {name: len(ds) for name, ds in dsd.items()}
    assert sum(m["split"]["n_cells"].values()) == m["n_cells"] == 240
    assert [t["task"] for t in m["tasks"]] == [t if isinstance(t, str) else t["task"] for t in ALL_TASKS]
    for entry in m["tasks"]:
        assert sum(entry["examples"].values()) == sum(1 for r in rows(dsd) if r["task"] == entry["task"])
        assert entry["templates"]["sha256"] == TEMPLATES[entry["task"]].sha256
        assert m["templates"][entry["templates"]["file"]]["template_ids"] == entry["templates"]["template_ids"]
        if "label_counts" in entry:
            assert sum(entry["label_counts"]["train"].values()) == entry["examples"]["train"]
    assert m["tasks"][5]["label_counts"]["train"].keys() <= {"sensitive", "resistant"}


def test_examples_config_and_card(mixture):
    out, _ = mixture
    examples = [json.loads(line) for line in (out / "examples.jsonl").read_text().splitlines()]
    per_task = Counter(e["task"] for e in examples)
    assert set(per_task) == {t if isinstance(t, str) else t["task"] for t in ALL_TASKS}
    assert max(per_task.values()) <= 24
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["seed"] == 3 and config["top_k"] == 10 and config["data"].endswith("toy.h5ad")
    card = (out / "README.md").read_text()
    assert f"c2t instruct {out.as_posix()}/config.yaml -o {out.as_posix()}" in card


def test_rebuild_from_saved_config_is_identical(mixture, tmp_path):
    out, dsd = mixture
    again = build(out / "config.yaml", out=tmp_path / "again")
    for name in dsd:
        assert again[name].data.table.equals(dsd[name].data.table)


def test_same_seed_same_data_any_chunking_other_seed_differs(toy, tmp_path):
    tasks = ["cell_type", "cell_type_mc", {"task": "generation", "weight": 2}]
    a = build(toy, out=tmp_path / "a", tasks=tasks, top_k=6, seed=7)
    b = build(toy, out=tmp_path / "b", tasks=tasks, top_k=6, seed=7, chunk_size=13)
    c = build(toy, out=tmp_path / "c", tasks=tasks, top_k=6, seed=8)
    for name in a:
        assert a[name].data.table.equals(b[name].data.table)
    assert a["test"]["cell_id"] != c["test"]["cell_id"]
    ma, mb = read_info(tmp_path / "a"), read_info(tmp_path / "b")
    assert {k: v for k, v in ma.items() if k != "name"} == {k: v for k, v in mb.items() if k != "name"}


def test_grouped_split_keeps_groups_apart(toy, tmp_path):
    dsd = build(toy, out=tmp_path / "g", tasks=["cell_type", "generation"], top_k=5, group="donor", seed=1)
    donor = toy.obs["donor"].astype(str).to_dict()
    donors = {name: {donor[r["cell_id"]] for r in rows(dsd, name)} for name in dsd}
    assert all(donors.values())
    assert not donors["train"] & donors["validation"] and not donors["train"] & donors["test"]
    assert not donors["validation"] & donors["test"]
    info = read_info(tmp_path / "g")["split"]
    assert info["group"] == "donor" and sorted(g for groups in info["groups"].values() for g in groups) == sorted(set(donor.values()))


def test_weights_set_the_mixture(toy, tmp_path):
    dsd = build(toy, out=tmp_path / "w", tasks={"cell_type": 2, "generation": 0.25}, top_k=5)
    counts = Counter(r["task"] for r in rows(dsd))
    assert counts["cell_type"] == 480 and counts["generation"] == 60
    pairs = Counter((r["cell_id"], r["template_id"]) for r in rows(dsd) if r["task"] == "cell_type")
    assert max(pairs.values()) <= 2


def test_multiple_choice_options(mixture):
    records = [r for r in rows(mixture[1]) if r["task"] == "cell_type_mc"]
    positions = Counter()
    for r in records:
        options = [line for line in r["prompt"].splitlines() if line[:3] in ("A. ", "B. ", "C. ", "D. ")]
        assert [o[0] for o in options] == list("ABCD")
        labels = [o[3:] for o in options]
        assert len(set(labels)) == 4 and labels[ord(r["completion"]) - ord("A")] == r["label"]
        positions[r["completion"]] += 1
    assert len(positions) == 4  # the true label is not always in the same place


def test_perturbation_pairs_a_matching_control(mixture, toy):
    obs = toy.obs.astype(str)
    records = [r for r in rows(mixture[1]) if r["task"] == "perturbation"]
    assert records
    for r in records:
        control, cell = obs.loc[r["control_cell_id"]], obs.loc[r["cell_id"]]
        assert control["target"] == "non-targeting" and cell["target"] == r["label"] != "non-targeting"
        assert control["bio_rep"] == cell["bio_rep"]


def test_multi_cell_examples_share_a_sample(mixture, toy):
    obs = toy.obs.astype(str)
    records = [r for r in rows(mixture[1]) if r["task"] == "multi_cell"]
    assert records
    for r in records:
        cells = r["cell_id"].split(";")
        assert len(cells) == 3 and len(set(cells)) == 3
        assert len(set(obs.loc[cells, "sample_id"])) == 1 and set(obs.loc[cells, "condition"]) == {r["completion"]}
        assert r["prompt"].count("Cell ") >= 3


def test_spatial_neighbours_come_from_training_cells(mixture, toy):
    _, dsd = mixture
    train_ids = {r["cell_id"] for r in rows(dsd, "train") if r["task"] == "spatial"}
    names = np.asarray(toy.obs_names)
    train = np.flatnonzero(np.isin(names, list(train_ids)))
    nn = NearestNeighbors(n_neighbors=5).fit(toy.obsm["spatial"][train])
    for r in [r for r in rows(dsd, "test") if r["task"] == "spatial"][:10]:
        i = int(np.flatnonzero(names == r["cell_id"])[0])
        found = train[nn.kneighbors(toy.obsm["spatial"][[i]], return_distance=False)[0]][:4]
        expected = ", ".join(toy.obs["cell_type"].astype(str).iloc[found])
        assert expected in r["prompt"]


def test_formats_and_select_format(toy, tmp_path):
    only = build(toy, out=tmp_path / "m", tasks="cell_type", top_k=5, formats=["messages"])
    assert "prompt" not in only["train"].column_names and "messages" in only["train"].column_names
    both = load(tmp_path / "m")
    assert both["train"].column_names == only["train"].column_names
    full = build(toy, out=tmp_path / "f", tasks="cell_type", top_k=5)
    assert "messages" not in c2t.instruct.select_format(full, "prompt_completion")["train"].column_names
    assert "prompt" not in c2t.instruct.select_format(full, "messages")["test"].column_names


def test_load_checks_the_manifest(mixture):
    out, _ = mixture
    with pytest.raises(c2t.C2TInputError, match="top_k: expected 50, found 10"):
        load(out, expect={"top_k": 50})


def test_success_replaces_and_failure_keeps_old_output(toy, tmp_path):
    out = tmp_path / "keep"
    build(toy, out=out, tasks="cell_type", top_k=5)
    (out / "marker").write_text("old")
    with pytest.raises(c2t.C2TInputError):
        build(toy, out=out, tasks="cell_type", top_k=5, label_key="no_such_column")
    assert (out / "marker").read_text() == "old"
    build(toy, out=out, tasks="cell_type", top_k=5)
    assert not (out / "marker").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["keep"]


def test_import_c2t_instruct_is_light():
    code = ("import sys, c2t.instruct; print(sorted(m for m in ('torch', 'transformers', 'numba', 'datasets', 'sklearn', "
            "'anndata') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
