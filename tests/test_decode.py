"""Decoding (generated) cell sentences back into expression with the inverse model."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from c2t import C2TInputError
from c2t.sentences import decode, from_adata


@pytest.fixture(scope="module")
def model(synth):
    return from_adata(synth, top_k=20, obs_keys=["cell_type"])


def predicted(model, ranks) -> np.ndarray:
    return model.inverse_model.predict(np.asarray(ranks))


def row(decoded: ad.AnnData, i: int) -> pd.Series:
    return pd.Series(decoded.X[i].toarray().ravel(), index=decoded.var_names)


def test_decoded_matrix_shape_and_values(model):
    decoded = decode(["G003 G010 G007"], model=model)
    assert decoded.shape == (1, len(model.vocabulary))
    assert decoded.X.dtype == np.float32
    assert decoded.var_names.tolist() == model.vocabulary.tolist()
    values = row(decoded, 0)
    np.testing.assert_array_equal(values[["G003", "G010", "G007"]], predicted(model, [1, 2, 3]))
    assert (values.drop(["G003", "G010", "G007"]) == 0).all()
    assert values["G003"] > values["G010"] > values["G007"] > 0
    assert decoded.obs["c2t_n_genes"].tolist() == [3]


def test_unknown_genes_are_dropped_counted_and_ranks_close_the_gap(model):
    decoded = decode(["G001 NOTAGENE G002 ALSO_NOT G003", "G004"], model=model)
    values = row(decoded, 0)
    # G002 follows an unknown token: it gets the prediction for rank 2, not 3
    np.testing.assert_array_equal(values[["G001", "G002", "G003"]], predicted(model, [1, 2, 3]))
    assert (values > 0).sum() == 3
    assert decoded.obs["c2t_n_unknown"].tolist() == [2, 0]
    assert decoded.obs["c2t_n_genes"].tolist() == [3, 1]
    report = decoded.uns["c2t_decode"]
    assert report["n_unknown"] == 2
    assert report["unknown_examples"] == {"NOTAGENE": 1, "ALSO_NOT": 1}
    assert report["n_tokens"] == 6
    assert report["n_genes_decoded"] == 4


def test_duplicates_keep_the_first_occurrence(model):
    decoded = decode(["G005 G006 G005 G007 G006"], model=model)
    values = row(decoded, 0)
    np.testing.assert_array_equal(values[["G005", "G006", "G007"]], predicted(model, [1, 2, 3]))
    assert decoded.obs["c2t_n_duplicate"].tolist() == [2]
    assert decoded.uns["c2t_decode"]["n_duplicate"] == 2
    assert decoded.obs["c2t_n_genes"].tolist() == [3]


def test_case_insensitive_match(model):
    decoded = decode(["g001 G002 g003"], model=model)
    np.testing.assert_array_equal(row(decoded, 0)[["G001", "G002", "G003"]], predicted(model, [1, 2, 3]))
    assert decoded.uns["c2t_decode"]["n_case_insensitive_matches"] == 2
    strict = decode(["g001 G002 g003"], model=model, case_insensitive=False)
    assert strict.obs["c2t_n_unknown"].tolist() == [2]
    assert row(strict, 0)["G002"] == predicted(model, [1])[0]


def test_case_insensitive_match_must_be_unambiguous():
    data = ad.AnnData(np.array([[5, 3, 1]], dtype=np.float32))
    data.var_names = ["Cd3e", "CD3E", "Lyz2"]
    cs = from_adata(data, top_k=None)
    decoded = decode(["cd3e LYZ2 CD3E Cd3e"], model=cs)
    values = row(decoded, 0)
    # 'cd3e' could be Cd3e or CD3E: unknown; LYZ2 -> Lyz2 (rank 1); exact matches keep their casing
    assert decoded.obs["c2t_n_unknown"].tolist() == [1]
    np.testing.assert_array_equal(values[["Lyz2", "CD3E", "Cd3e"]], predicted(cs, [1, 2, 3]))


def test_punctuation_and_delimiters_are_trimmed(model):
    expected = decode(["G001 G002 G003"], model=model).X.toarray()
    for text in ("G001, G002, G003.", "G001 G002 G003.\n", " G001;  G002: G003 "):
        decoded = decode([text], model=model)
        np.testing.assert_array_equal(decoded.X.toarray(), expected, err_msg=repr(text))
        assert decoded.obs["c2t_n_unknown"].tolist() == [0]
    comma = decode(["G001,G002,G003"], model=model, delimiter=",")
    np.testing.assert_array_equal(comma.X.toarray(), expected)
    whitespace = decode(["G001\tG002\n G003"], model=model, delimiter=None)
    np.testing.assert_array_equal(whitespace.X.toarray(), expected)


def test_empty_sentences_give_all_zero_rows(model):
    decoded = decode(["", "G001", "   ", "NOPE ..."], model=model)
    assert decoded.shape == (4, len(model.vocabulary))
    dense = decoded.X.toarray()
    assert not dense[[0, 2, 3]].any()
    assert dense[1].sum() == predicted(model, [1])[0]
    assert decoded.uns["c2t_decode"]["n_empty_cells"] == 3
    assert decoded.obs["c2t_n_genes"].tolist() == [0, 1, 0, 0]
    only_empty = decode([""], model=model)
    assert only_empty.X.nnz == 0
    assert decode([], model=model).shape == (0, len(model.vocabulary))


def test_decode_from_a_saved_folder_equals_decode_from_the_object(model, tmp_path):
    folder = model.save(tmp_path / "model")
    texts = [*model.texts()[:30], "G001 UNKNOWN g002 G001"]
    from_folder = decode(texts, model=folder)
    from_object = decode(texts, model=model)
    np.testing.assert_array_equal(from_folder.X.toarray(), from_object.X.toarray())
    pd.testing.assert_frame_equal(from_folder.obs, from_object.obs)
    assert from_folder.uns["c2t_decode"] == from_object.uns["c2t_decode"]
    assert decode(texts, model=str(folder)).X.nnz == from_object.X.nnz


def test_decode_of_cell_sentences_equals_decode_of_their_texts(model):
    by_ids = decode(model, model=model)
    by_text = decode(model.texts(), model=model)
    np.testing.assert_array_equal(by_ids.X.toarray(), by_text.X.toarray())
    assert by_ids.obs_names.tolist() == model.cell_ids.tolist()
    assert by_text.obs_names.tolist() == [f"cell_{i}" for i in range(len(model))]
    for key in ("c2t_n_genes", "c2t_n_unknown", "c2t_n_duplicate"):
        np.testing.assert_array_equal(by_ids.obs[key], by_text.obs[key])
    np.testing.assert_array_equal(by_ids.obs["c2t_n_genes"], model.lengths)


def test_decoding_in_chunks_changes_nothing(model, monkeypatch):
    """Texts are tokenised a bounded number of sentences at a time; the result and report are the same."""
    import c2t.sentences._decode as decode_module

    texts = [*model.texts(top_k=20)[:40], "NOT_A_GENE " * 3, "", "nope " + model.texts(top_k=3)[0]]
    whole = decode(texts, model=model)
    monkeypatch.setattr(decode_module, "_DECODE_CHUNK", 7)
    chunked = decode(texts, model=model)
    assert (whole.X != chunked.X).nnz == 0
    pd.testing.assert_frame_equal(whole.obs, chunked.obs)
    assert whole.uns["c2t_decode"] == chunked.uns["c2t_decode"]
    assert chunked.uns["c2t_decode"]["unknown_examples"] == {"NOT_A_GENE": 3, "nope": 1}


def test_decoded_values_follow_the_sentence_order(model):
    decoded = decode(model[:10], model=model)
    for i in range(10):
        values = decoded.X[i].toarray().ravel()[model.gene_ids[model.offsets[i] : model.offsets[i + 1]]]
        np.testing.assert_array_equal(values, predicted(model, np.arange(1, len(values) + 1)))


def test_obs_is_carried_and_checked(model):
    obs = pd.DataFrame({"cell_type": ["T", "B"]}, index=["a", "b"])
    decoded = decode(["G001", "G002"], model=model, obs=obs)
    assert decoded.obs_names.tolist() == ["a", "b"]
    assert decoded.obs["cell_type"].tolist() == ["T", "B"]
    assert "c2t_n_genes" not in obs  # the caller's frame is not modified
    with pytest.raises(C2TInputError, match="obs has 2 rows but there are 3 sentences"):
        decode(["G001", "G002", "G003"], model=model, obs=obs)


def test_decode_refuses_bad_input(model, synth, tmp_path):
    with pytest.raises(C2TInputError, match="a sequence of texts, not one string"):
        decode("G001 G002", model=model)
    other = from_adata(synth[:, :50].copy(), top_k=5)
    with pytest.raises(C2TInputError, match="different gene vocabularies"):
        decode(other, model=model)
    with pytest.raises(C2TInputError, match="no such folder"):
        decode(["G001"], model=tmp_path / "missing")
    folder = model.save(tmp_path / "m")
    (folder / "vocabulary.txt").write_text("G001\n")
    with pytest.raises(C2TInputError, match="vocabulary_hash"):
        decode(["G001"], model=folder)
