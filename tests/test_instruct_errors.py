"""Bad input to c2t.instruct.build: one clear C2TInputError naming the thing, and nothing written."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from c2t import C2TInputError
from c2t.instruct import build, toy_adata
from c2t.sentences import from_adata


@pytest.fixture(scope="module")
def toy():
    return toy_adata(120)


def refused(tmp_path, data, match: str, **kwargs) -> None:
    """The build fails with ``match`` in the message and leaves the folder empty (no output, no staging)."""
    with pytest.raises(C2TInputError, match=match):
        build(data, out=tmp_path / "out", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_missing_label_column(tmp_path, toy):
    refused(tmp_path, toy, r"cell_type: label column \(label_key\) 'celltype' not found in obs of the AnnData; "
            r"columns are: cell_type, donor", tasks="cell_type", label_key="celltype")


def test_missing_label_column_in_a_file(tmp_path, toy):
    path = tmp_path / "in.h5ad"
    toy.write_h5ad(path)
    with pytest.raises(C2TInputError, match=r"metadata: column to predict \(key\) 'disease' not found in obs of .*in.h5ad"):
        build(path, out=tmp_path / "out", tasks={"metadata": {"key": "disease"}})
    assert [p.name for p in tmp_path.iterdir()] == ["in.h5ad"]


def test_drug_column_absent(tmp_path, toy):
    refused(tmp_path, toy, r"drug_response: drug column \(drug_key\) 'condition_drug' not found",
            tasks=[{"task": "drug_response", "response_key": "response", "drug_key": "condition_drug"}])


def test_drug_response_labels_must_be_sensitive_or_resistant(tmp_path, toy):
    refused(tmp_path, toy, r"obs\['condition'\] has values other than sensitive/resistant: 'ctrl' \(\d+ cells\).*label_map",
            tasks=[{"task": "drug_response", "response_key": "condition", "drug_key": "treatment"}])


def test_perturbation_column_absent(tmp_path, toy):
    refused(tmp_path, toy, r"perturbation: perturbation column \(perturbation_key\) 'target_max' not found",
            tasks=["perturbation"], stratify=None)


def test_perturbation_without_controls(tmp_path, toy):
    refused(tmp_path, toy, r"no control cells: obs\['target'\] has no value 'NT' \(control\)",
            tasks=[{"task": "perturbation", "perturbation_key": "target", "control": "NT"}])


def test_nan_labels(tmp_path, toy):
    adata = toy.copy()
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(object)
    adata.obs.iloc[[3, 9], adata.obs.columns.get_loc("cell_type")] = np.nan
    refused(tmp_path, adata, r"cell_type: label obs\['cell_type'\] has 2 missing \(NaN\) value\(s\), e.g. cell 'cell0003'; "
            r"pass drop_missing=True", tasks="cell_type")
    dsd = build(adata, out=tmp_path / "kept", tasks="cell_type", drop_missing=True, stratify=None)
    assert sum(len(ds) for ds in dsd.values()) == 118


def test_empty_sentences(tmp_path, toy):
    adata = toy.copy()
    dense = adata.X.toarray()
    dense[[0, 5]] = 0
    adata.X = sp.csr_matrix(dense)
    refused(tmp_path, adata, r"cell_type: 2 cell\(s\) have an empty cell sentence \(no expressed gene\), e.g. 'cell0000'",
            tasks="cell_type")


def test_too_few_cells_per_label(tmp_path, toy):
    adata = toy.copy()
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(str)
    adata.obs.iloc[:2, adata.obs.columns.get_loc("cell_type")] = "Platelet"
    refused(tmp_path, adata, r"too few cells to stratify by 'cell_type': 'Platelet' \(2 cells\); each label needs at least 3",
            tasks="cell_type")


def test_unknown_task_and_parameter(tmp_path, toy):
    refused(tmp_path, toy, r"unknown task 'celltype'; tasks are: cell_type, cell_type_mc", tasks=["celltype"])
    refused(tmp_path, toy, r"task 'spatial' has no parameter 'neighbours'; its parameters are: weight, top_k",
            tasks=[{"task": "spatial", "neighbours": 3}])
    refused(tmp_path, toy, r"no tasks given", tasks=[])


def test_bad_parameter_values(tmp_path, toy):
    refused(tmp_path, toy, r"cell_type: weight must be a positive number, not -1", tasks={"cell_type": -1})
    refused(tmp_path, toy, r"cell_type_mc: n_options must be an integer from 2 to 26", tasks=[{"task": "cell_type_mc", "n_options": 1}])
    refused(tmp_path, toy, r"split must give three non-negative fractions", tasks="cell_type", split=[0.5, 0.5])
    refused(tmp_path, toy, r"formats must be one or both of prompt_completion, messages", tasks="cell_type", formats=["chat"])
    refused(tmp_path, toy, r"generation: top_k=20 is more than the build's top_k=10", tasks=[{"task": "generation", "top_k": 20}],
            top_k=10)


def test_template_errors_name_the_template_and_field(tmp_path, toy):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "cell_type.yaml").write_text(
        'task: cell_type\nanswer: "{cell_type}"\ntemplates:\n'
        '  - {id: ok.1, text: "Genes: {cell_sentence}"}\n'
        '  - {id: bad.2, text: "Genes: {cell_sentence} from {tissue}"}\n'
    )
    with pytest.raises(C2TInputError, match=r"cell_type.yaml: template 'bad.2' uses \{tissue\}, which the cell_type task "
                                            r"does not provide with these settings \(available: \{cell_sentence\}, \{n_genes\}\)"):
        build(toy, out=tmp_path / "out", tasks="cell_type", prompts_dir=prompts)
    assert [p.name for p in tmp_path.iterdir()] == ["prompts"]


def test_organism_field_needs_an_organism(tmp_path, toy):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "cell_type.yaml").write_text(
        'task: cell_type\nanswer: "{cell_type}"\ntemplates:\n  - {id: org.1, text: "A {organism} cell: {cell_sentence}"}\n'
    )
    with pytest.raises(C2TInputError, match=r"template 'org.1' uses \{organism\}"):
        build(toy, out=tmp_path / "out", tasks="cell_type", prompts_dir=prompts)
    dsd = build(toy, out=tmp_path / "out", tasks="cell_type", prompts_dir=prompts, organism="human")
    assert dsd["train"][0]["prompt"].startswith("A human cell: ")


def test_where_and_group_errors(tmp_path, toy):
    refused(tmp_path, toy, r"where= column 'Valid' not found in obs", tasks="cell_type", where={"Valid": 1})
    refused(tmp_path, toy, r"where=\{'donor': 'nobody'\} keeps none of the 120 cells", tasks="cell_type",
            where={"donor": "nobody"})
    refused(tmp_path, toy, r"group column 'tissue' has 2 group\(s\); splitting by group into 3 non-empty splits needs "
            r"at least 3", tasks="cell_type", group="tissue")


def test_spatial_needs_coordinates(tmp_path, toy):
    adata = toy.copy()
    del adata.obsm["spatial"]
    refused(tmp_path, adata, r"obsm\['spatial'\] not found in the AnnData; obsm keys are: \(none\)", tasks="spatial")
    cs = from_adata(toy, top_k=5, obs_keys=["cell_type"])
    refused(tmp_path, cs, r"obsm\['spatial'\] is needed \(spatial task\) but a CellSentences has no obsm", tasks="spatial")


def test_multi_cell_label_must_be_shared_by_the_sample(tmp_path, toy):
    refused(tmp_path, toy, r"multi_cell: sample '.+' \(obs\['sample_id'\]\) has cells with different 'cell_type' labels",
            tasks=[{"task": "multi_cell", "key": "cell_type", "sample_key": "sample_id"}])


def test_bad_input_types(tmp_path):
    refused(tmp_path, [1, 2, 3], r"expected an AnnData, an .h5ad path or a CellSentences, not list", tasks="cell_type")
    refused(tmp_path, tmp_path / "missing.h5ad", r"missing.h5ad: no such file", tasks="cell_type")
    with pytest.raises(C2TInputError, match=r"missing.yaml: no such config file"):
        build(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("data: x.h5ad\ntask: [cell_type]\n")
    with pytest.raises(C2TInputError, match=r"unknown config key 'task'; keys are: data, out, tasks"):
        build(tmp_path / "bad.yaml", out=tmp_path / "out")
