"""Instruction datasets from the real files in ../shared/data (skipped, with the reason, where a file is absent)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from c2t import C2TInputError
from c2t.instruct import build, read_info, score
from c2t.io import read_h5ad

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PC9 = DATA / "pc9_erlotinib_day11.h5ad"
PAPALEXI = DATA / "papalexi2021_thp1_perturb_sceptre.h5ad"
OSMFISH = DATA / "osmfish_sscortex_codeluppi2018.h5ad"
KANG = DATA / "kang2018_ctrl_stim_muscat.h5ad"


def need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path.name} is absent from ../shared/data")
    return path


def subsample(adata, n: int, seed: int = 0):
    rows = np.sort(np.random.default_rng(seed).choice(adata.n_obs, size=min(n, adata.n_obs), replace=False))
    return adata[rows].copy()


def records(dsd):
    return [r for name in dsd for r in dsd[name].to_list()]


def test_pc9_erlotinib_drug_response(tmp_path):
    adata = read_h5ad(need(PC9))
    qc = subsample(adata[adata.obs["pass_qc_200genes"].to_numpy()], 600)
    task = {"task": "drug_response", "response_key": "scdeal_label", "drug_key": "condition"}
    with pytest.raises(C2TInputError, match=r"obs\['scdeal_label'\] has values other than sensitive/resistant: 'unlabeled'"):
        build(qc, out=tmp_path / "refused", tasks=[task])
    task["label_map"] = {"unlabeled": "sensitive"}
    dsd = build(qc, out=tmp_path / "pc9", tasks=[task], top_k=50)
    rows = records(dsd)
    assert len(rows) == 600 and {r["label"] for r in rows} == {"resistant", "sensitive"}
    condition = qc.obs["condition"].astype(str)
    for r in rows:  # resistant = erlotinib survivors; the untreated controls stand in for "sensitive"
        assert condition[r["cell_id"]] == ("erlotinib_day11" if r["label"] == "resistant" else "control_day11")
        assert "erlotinib" in r["prompt"] and r["completion"] == r["label"]
    counts = read_info(tmp_path / "pc9")["tasks"][0]["label_counts"]
    expected = qc.obs["scdeal_label"].value_counts()
    assert sum(c.get("resistant", 0) for c in counts.values()) == expected["resistant"]
    assert score(dsd["test"], dsd["test"]["completion"])["per_task"]["drug_response"]["accuracy"] == 1.0


def test_papalexi_perturbation_pairs_controls_of_the_same_replicate(tmp_path):
    adata = subsample(read_h5ad(need(PAPALEXI)), 3000)
    dsd = build(adata, out=tmp_path / "perturb", tasks="perturbation", top_k=40, seed=1)
    obs = adata.obs.astype(str)
    rows = records(dsd)
    assert len(rows) == int((obs["target_max"] != "non-targeting").sum())
    split_of = {r["cell_id"]: name for name in dsd for r in dsd[name].to_list()}
    for r in rows:
        control, cell = obs.loc[r["control_cell_id"]], obs.loc[r["cell_id"]]
        assert control["target_max"] == "non-targeting" and cell["target_max"] == r["label"]
        assert control["bio_rep"] == cell["bio_rep"]
        assert r["control_cell_id"] not in split_of  # controls are inputs only
        assert r["label"] in r["prompt"] and len(r["completion"].split()) <= 40
    manifest = read_info(tmp_path / "perturb")
    assert manifest["split"]["stratify"] == "target_max" and manifest["tasks"][0]["n_control_cells"] > 0


def test_osmfish_spatial_context(tmp_path):
    adata = read_h5ad(need(OSMFISH))
    dsd = build(adata, out=tmp_path / "spatial", tasks=[{"task": "spatial", "label_key": "ClusterName", "k": 5}],
                where={"Valid": 1}, seed=2)
    rows = records(dsd)
    valid = adata[adata.obs["Valid"].to_numpy() == 1]
    assert len(rows) == valid.n_obs and "Excluded" not in {r["label"] for r in rows}
    names = np.asarray(valid.obs_names)
    train = np.flatnonzero(np.isin(names, dsd["train"]["cell_id"]))
    nn = NearestNeighbors(n_neighbors=6).fit(valid.obsm["spatial"][train])
    labels = valid.obs["ClusterName"].astype(str).to_numpy()
    for r in dsd["test"].select(range(20)).to_list():
        i = int(np.flatnonzero(names == r["cell_id"])[0])
        found = train[nn.kneighbors(valid.obsm["spatial"][[i]], return_distance=False)[0]]
        assert ", ".join(labels[found[found != i][:5]]) in r["prompt"]
    assert read_info(tmp_path / "spatial")["n_cells_filtered_out"] == int((adata.obs["Valid"] == 0).sum())


def test_kang_multi_cell_condition(tmp_path):
    adata = read_h5ad(need(KANG))
    task = {"task": "multi_cell", "key": "group_id", "sample_key": "sample_id", "cells_per_example": 4}
    dsd = build(adata, out=tmp_path / "kang", tasks=[task], top_k=20)
    obs = adata.obs.astype(str)
    rows = records(dsd)
    assert Counter(r["label"] for r in rows).keys() == {"ctrl", "stim"}
    for r in rows:
        cells = r["cell_id"].split(";")
        assert len(cells) == 4 and obs.loc[cells, "sample_id"].nunique() == 1
        assert set(obs.loc[cells, "group_id"]) == {r["completion"]}
    n_samples = obs["sample_id"].nunique()
    assert len(rows) >= (adata.n_obs - n_samples * 3 * 3) // 4  # at most 3 cells left over per sample and split
