"""c2t.plm tokenisers against hand-worked examples of the published rules (no torch needed)."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from c2t import plm
from c2t._errors import C2TInputError

GENES = ["A", "B", "C", "D", "E"]


def cells(rows, genes=GENES, obs=None) -> ad.AnnData:
    x = sp.csr_matrix(np.asarray(rows, dtype=np.float32))
    index = [f"c{i}" for i in range(x.shape[0])]
    return ad.AnnData(x, obs=pd.DataFrame(obs or {}, index=index), var=pd.DataFrame(index=list(genes)))


# the 5-gene cell of the docstrings: A=0, B=4, C=1, D=4 (ties with B), E=11; total 20
CELL = [0, 4, 1, 4, 11]


def words(tok, enc, row=0):
    ids = np.asarray(enc["input_ids"][row])[np.asarray(enc["attention_mask"][row]).astype(bool)]
    return tok.vocab.tokens()[ids].tolist()


def all_tokenizers(genes=GENES):
    emb = pd.DataFrame(np.eye(len(genes), 4), index=genes)
    chrom = pd.DataFrame({"chromosome": ["1", "2"] * (len(genes) // 2) + ["1"] * (len(genes) % 2),
                          "start": np.arange(len(genes)) * 10}, index=genes)
    return {
        "scbert": plm.ScBERTTokenizer(),
        "geneformer": plm.GeneformerTokenizer(version=2, max_length=8),
        "scgpt": plm.ScGPTTokenizer(n_bins=5, max_length=4, batch_key="batch"),
        "tgpt": plm.TGPTTokenizer(top_k=3),
        "scfoundation": plm.ScFoundationTokenizer(),
        "uce": plm.UCETokenizer(gene_embeddings=emb, chromosomes=chrom, sample_size=8, pad_length=16),
        "cellplm": plm.CellPLMTokenizer(gene_embeddings=emb, max_cells=3),
        "rank_metadata": plm.RankMetadataTokenizer(metadata_keys=["batch"], max_length=4),
        "scmulan": plm.ScMulanTokenizer(metadata_keys=["batch"], max_genes=3),
    }


@pytest.fixture
def small():
    rows = [CELL, [3, 0, 0, 1, 0], [0, 0, 0, 0, 0], [2, 2, 2, 2, 2], [1, 7, 0, 0, 5]]
    return cells(rows, obs={"batch": ["b1", "b2", "b1", "b2", "b1"]})


# ------------------------------------------------------------------------------------------ scBERT
def test_scbert_bins_floor_cap_and_panel_order():
    adata = cells([CELL])
    # log2(1 + x * 20/20): B=log2(5)=2.32->2, C=1->1, D->2, E=log2(12)=3.58->3; cap 5 not reached
    enc = plm.ScBERTTokenizer(target_sum=20)(adata)
    assert enc["input_ids"].tolist() == [[0, 2, 1, 2, 3, 0]]
    assert enc["attention_mask"].tolist() == [[1] * 6]
    # cap: x 10,000 / 20 = 500 -> all expressed genes exceed 2**5 - 1
    assert plm.ScBERTTokenizer()(adata)["input_ids"].tolist() == [[0, 5, 5, 5, 5, 0]]
    assert plm.ScBERTTokenizer(max_bin=3, target_sum=20)(adata)["input_ids"].tolist() == [[0, 2, 1, 2, 3, 0]]
    assert plm.ScBERTTokenizer(max_bin=2, target_sum=20)(adata)["input_ids"].tolist() == [[0, 2, 1, 2, 2, 0]]
    # a fixed panel: its order, zeros for genes the data lacks, data genes outside the panel counted
    tok = plm.ScBERTTokenizer(genes=["E", "Z", "B"], target_sum=20, append_position=False)
    enc = tok(adata)
    assert enc["input_ids"].tolist() == [[3, 0, 2]]
    assert enc.report["genes"]["n_unmatched"] == 3  # A, C, D
    assert enc.report["genes"]["n_vocabulary_genes_absent_from_data"] == 1  # Z
    assert enc.maskable.tolist() == [[True, False, True]]  # expressed genes only
    assert tok.vocab.id("mask") == 6


def test_scbert_needs_counts():
    with pytest.raises(C2TInputError, match="scbert recipe needs raw counts"):
        plm.ScBERTTokenizer()(cells([[0.5, 1.2, 0, 0, 3.3]]))


# ------------------------------------------------------------------------------------------ Geneformer
def test_geneformer_rank_value_encoding_by_hand():
    adata = cells([CELL])
    medians = {"A": 1.0, "B": 2.0, "C": 500.0, "D": 1000.0, "E": 11000.0}
    tok = plm.GeneformerTokenizer(gene_medians=medians)
    enc = tok(adata)  # B=1000, D=2, C=1, E=0.5 (x 10,000 / 20 / median); A=0 is dropped
    assert words(tok, enc) == ["B", "D", "C", "E"]
    assert tok.vocab.token_to_id["<pad>"] == 0 and tok.vocab.token_to_id["<mask>"] == 1
    assert words(tok, plm.GeneformerTokenizer(gene_medians=medians, max_length=2)(adata)) == ["B", "D"]
    v2 = plm.GeneformerTokenizer(version=2, gene_medians=medians, max_length=4)
    enc2 = v2(adata)
    assert words(v2, enc2) == ["<cls>", "B", "D", "<eos>"]
    assert [v2.vocab.token_to_id[t] for t in ("<pad>", "<mask>", "<cls>", "<eos>")] == [0, 1, 2, 3]
    assert enc2.special_mask.tolist() == [[True, False, False, True]]
    assert plm.GeneformerTokenizer(version=2).max_length == 4096
    assert plm.GeneformerTokenizer().max_length == 2048


def test_geneformer_medians_from_reference_and_padding():
    # reference: gene X non-zero in cells 1, 2 at x10,000/total = 5000, 2500 -> median 3750
    ref = cells([[1, 1, 0], [1, 3, 0], [0, 4, 4]], genes=["X", "Y", "Z"])
    tok = plm.GeneformerTokenizer().fit(ref)
    assert tok.medians["X"] == pytest.approx(3750.0)
    assert tok.medians["Y"] == pytest.approx(5000.0)  # 5000, 7500, 5000
    assert tok.medians["Z"] == pytest.approx(5000.0)
    enc = tok(cells([[1, 0, 0], [1, 3, 4]], genes=["X", "Y", "Z"]))
    assert enc["input_ids"].shape == (2, 3)
    assert enc["attention_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]
    assert enc["input_ids"][0, 1:].tolist() == [0, 0]  # <pad>
    # a gene never expressed in the reference has no median and is not in the vocabulary
    tok2 = plm.GeneformerTokenizer().fit(cells([[1, 0]], genes=["X", "Q"]))
    assert "Q" not in tok2.medians


def test_geneformer_cell_totals_from_n_counts(tmp_path):
    """The published tokenizer divides by obs["n_counts"]; with total_key the medians follow that column."""
    ref = cells([[1, 1, 0], [1, 3, 0], [0, 4, 4]], genes=["X", "Y", "Z"], obs={"n_counts": [4.0, 8.0, 16.0]})
    tok = plm.GeneformerTokenizer(total_key="n_counts").fit(ref)
    assert tok.medians["X"] == pytest.approx(1875.0)  # 1/4 and 1/8 x 10,000
    assert tok.medians["Y"] == pytest.approx(2500.0)  # 2500, 3750, 2500
    assert tok.medians["Z"] == pytest.approx(2500.0)
    assert plm.GeneformerTokenizer().fit(ref).medians["X"] == pytest.approx(3750.0)  # the row sums 2, 4, 8
    assert plm.load_tokenizer(tok.save(tmp_path / "tok")).total_key == "n_counts"
    bad = cells([[1, 1, 0], [1, 3, 0]], genes=["X", "Y", "Z"], obs={"n_counts": [4.0, 0.0]})
    with pytest.raises(C2TInputError, match=r"obs\['n_counts'\] must hold each cell's positive total count; cell 'c1'"):
        plm.GeneformerTokenizer(total_key="n_counts").fit(bad)
    with pytest.raises(C2TInputError, match="n_counts"):
        plm.GeneformerTokenizer(total_key="n_counts").fit(cells([[1, 1, 0]], genes=["X", "Y", "Z"]))


def test_geneformer_ties_are_seeded_and_chunking_independent():
    adata = cells([[2, 2, 2, 2, 2]] * 6)
    tok = plm.GeneformerTokenizer(gene_medians=dict.fromkeys(GENES, 1.0))
    one = tok(adata, batch_size=1)["input_ids"]
    assert np.array_equal(one, tok(adata, batch_size=4)["input_ids"])
    assert len({tuple(r) for r in one.tolist()}) > 1  # ties ordered per cell, not always the same way
    other = plm.GeneformerTokenizer(gene_medians=dict.fromkeys(GENES, 1.0), seed=1)(adata)["input_ids"]
    assert not np.array_equal(one, other)


def test_geneformer_bad_input():
    with pytest.raises(C2TInputError, match="needs raw counts"):
        plm.GeneformerTokenizer()(cells([[0.5, 1.5, 0, 0, 1]]))
    with pytest.raises(C2TInputError, match="lacks <cls>, <eos>"):
        plm.GeneformerTokenizer(version=2, token_dictionary={"<pad>": 0, "<mask>": 1, "A": 2})
    with pytest.raises(C2TInputError, match="none of the 5 genes"):
        plm.GeneformerTokenizer(token_dictionary={"<pad>": 0, "<mask>": 1, "ENSG1": 2},
                                gene_medians={"ENSG1": 1.0})(cells([CELL]))
    with pytest.raises(C2TInputError, match="version must be"):
        plm.GeneformerTokenizer(version=3)
    with pytest.raises(C2TInputError, match="negative, NaN or infinite"):
        plm.GeneformerTokenizer()(cells([[1, -1, 0, 0, 2]]))


# ------------------------------------------------------------------------------------------ scGPT
def test_scgpt_quantile_bins_by_hand():
    tok = plm.ScGPTTokenizer(n_bins=5)
    enc = tok(cells([CELL] * 20))
    # edges = quantiles of (1, 4, 4, 11) at 0, 1/3, 2/3, 1 = (1, 4, 4, 11)
    assert words(tok, enc) == ["<cls>", "B", "C", "D", "E"]
    values = enc["values"]
    assert values[:, 0].tolist() == [0.0] * 20  # <cls>
    assert set(values[:, 2].tolist()) == {1.0}  # C = 1 = the lowest edge -> bin 1
    assert set(values[:, 4].tolist()) == {4.0}  # E = 11 = the top edge -> the top bin
    tied = values[:, [1, 3]].ravel()  # B = D = 4 span bins 2 and 3: drawn per (cell, gene)
    assert set(tied.tolist()) == {2.0, 3.0}
    # with 51 bins: C -> 1, E -> 50, B and D in 18..33 (edges <= 4: 33, < 4: 17)
    enc51 = plm.ScGPTTokenizer()(cells([CELL] * 20))
    assert set(enc51["values"][:, 2].tolist()) == {1.0} and set(enc51["values"][:, 4].tolist()) == {50.0}
    assert enc51["values"][:, [1, 3]].min() >= 18 and enc51["values"][:, [1, 3]].max() <= 33


def test_scgpt_padding_truncation_and_zero_genes():
    adata = cells([CELL, [3, 0, 0, 0, 0]])
    tok = plm.ScGPTTokenizer(n_bins=5)
    enc = tok(adata)
    assert enc["attention_mask"].tolist() == [[1] * 5, [1, 1, 0, 0, 0]]
    v = enc["values"][1].tolist()  # a single non-zero value equals every edge: drawn from bins 1..4
    assert v[0] == 0.0 and v[1] in (1.0, 2.0, 3.0, 4.0) and v[2:] == [-2.0, -2.0, -2.0]
    # truncation: max_length 3 = <cls> + 2 of the 4 expressed genes, a seeded subset in vocabulary order
    short = plm.ScGPTTokenizer(n_bins=5, max_length=3)
    many = cells([CELL] * 30)
    sub = short(many)["input_ids"]
    assert sub.shape == (30, 3) and (sub[:, 1] < sub[:, 2]).all()
    assert len({tuple(r) for r in sub.tolist()}) > 1
    assert np.array_equal(sub, short(many, batch_size=7)["input_ids"])
    # every gene, zeros as bin 0; expressed genes keep the same bins as without zeros
    dense = plm.ScGPTTokenizer(n_bins=5, include_zero_genes=True)
    enc_d = dense(adata)
    assert words(dense, enc_d) == ["<cls>", "A", "B", "C", "D", "E"]
    assert enc_d["values"][0, 1] == 0.0
    assert enc_d["values"][0, 2:].tolist() == enc["values"][0, 1:].tolist()


def test_scgpt_batch_and_modality_tokens():
    adata = cells([CELL, CELL], obs={"batch": ["b1", "b2"]})
    tok = plm.ScGPTTokenizer(n_bins=5, batch_key="batch", gene_modality={"A": "RNA", "B": "RNA", "C": "ATAC",
                                                                           "D": "ATAC", "E": "RNA"})
    enc = tok(adata)
    assert tok.vocab.tokens()[enc["batch_ids"]].tolist() == ["<batch=b1>", "<batch=b2>"]
    mods = tok.vocab.tokens()[enc["modality_ids"][0]].tolist()
    assert mods[1:] == ["<modality=RNA>", "<modality=ATAC>", "<modality=ATAC>", "<modality=RNA>"]


# ------------------------------------------------------------------------------------------ tGPT
def test_tgpt_top_k_ranking_matches_cell_sentences():
    from c2t.sentences import from_adata

    rng = np.random.default_rng(0)
    x = rng.poisson(1.0, size=(40, 30)).astype(np.float32)  # many ties
    adata = cells(x, genes=[f"G{i}" for i in range(30)])
    tok = plm.TGPTTokenizer(top_k=8)
    enc = tok(adata, batch_size=7)
    cs = from_adata(adata, top_k=8)
    assert [words(tok, enc, i) for i in range(40)] == [s.split() for s in cs.texts()]  # same seeded tie-break
    assert enc["input_ids"].shape[1] == 8
    small = plm.TGPTTokenizer(top_k=3)
    enc = small(cells([CELL, [0, 0, 0, 0, 0]]))
    assert words(small, enc)[0] == "E" and sorted(words(small, enc)[1:]) == ["B", "D"]
    assert enc["attention_mask"][1].tolist() == [0, 0, 0]  # an empty cell: all padding


def test_rank_kernel_orders_like_cell_sentences():
    from c2t.plm._kernels import rank_sequences
    from c2t.sentences._kernels import bits_for, float_bits, rank_rows

    rng = np.random.default_rng(1)
    x = sp.csr_matrix(rng.poisson(0.7, size=(50, 300)) * rng.choice([0.5, 1.0, 1.7], size=(50, 300)), dtype=np.float32)
    n = x.shape[0]
    col_map = rng.permutation(300).astype(np.int32)
    for k in (5, 300):
        lengths = np.minimum(np.diff(x.indptr), k).astype(np.int64)
        width = int(lengths.max())
        offsets = np.arange(n, dtype=np.int64) * width
        a, b = np.zeros(n * width, np.int32), np.zeros(n * width, np.int32)
        rank_rows(x.indptr, x.indices, float_bits(x.data), col_map, False, False, 3, 5, bits_for(300), k, offsets, a)
        rank_sequences(x.indptr, x.indices, x.data, col_map, np.arange(300, dtype=np.int32), np.ones(n),
                       np.ones((1, 300)), np.zeros(n, np.int64), 3, 5, bits_for(300), lengths, offsets, b,
                       np.zeros(n * width, np.uint32), np.zeros(n, np.int64))
        assert np.array_equal(a, b)


# ------------------------------------------------------------------------------------------ scFoundation
def test_scfoundation_values_and_depth_tokens():
    adata = cells([CELL])
    tok = plm.ScFoundationTokenizer()
    enc = tok(adata)
    assert words(tok, enc) == ["B", "C", "D", "E", "<T>", "<S>"]
    expected = [*np.log1p(np.array([4, 1, 4, 11]) * 500.0).tolist(), np.log10(20), 4.0]
    assert enc["values"][0].tolist() == pytest.approx(expected, rel=1e-6)
    assert plm.ScFoundationTokenizer(resolution="f2")(adata)["values"][0, -1] == pytest.approx(np.log10(40))
    assert plm.ScFoundationTokenizer(resolution="a1")(adata)["values"][0, -1] == pytest.approx(np.log10(20) + 1)
    with pytest.raises(C2TInputError, match="resolution must look like"):
        plm.ScFoundationTokenizer(resolution="x4")
    with pytest.raises(C2TInputError, match="needs raw counts"):
        tok(cells([[0.3, 0, 0, 0, 1.7]]))


# ------------------------------------------------------------------------------------------ UCE
def test_uce_sampling_grouped_by_chromosome():
    genes = [f"G{i}" for i in range(8)]
    chrom = pd.DataFrame({"chromosome": ["1", "1", "2", "2", "3", "3", "1", "X"],
                          "start": [30, 10, 5, 1, 7, 3, 20, 1]}, index=genes)
    emb = pd.DataFrame(np.arange(32, dtype=float).reshape(8, 4), index=genes)
    tok = plm.UCETokenizer(gene_embeddings=emb.iloc[:7], chromosomes=chrom, sample_size=50, pad_length=64)
    x = np.array([[3, 1, 0, 2, 5, 0, 1, 9], [0, 0, 0, 0, 0, 0, 0, 0]], dtype=np.float32)
    enc = tok(cells(x, genes=genes))
    assert enc.report["genes"]["n_unmatched"] == 1  # G7 has no embedding
    w = words(tok, enc)
    assert w[0] == "<cls>" and w[-1] == "<chrom_end>"
    genes_out = [t for t in w if t.startswith("G")]
    assert len(genes_out) == 50 and set(genes_out) <= {"G0", "G1", "G3", "G4", "G6"}  # expressed, embedded
    # chromosome blocks: <chr=c> then that chromosome's genes by start, then <chrom_end>
    start = dict(zip(genes, chrom["start"], strict=True))
    blocks, current = [], None
    for t in w[1:]:
        if t.startswith("<chr="):
            current = (t[5:-1], [])
        elif t == "<chrom_end>":
            blocks.append(current)
        else:
            current[1].append(t)
    assert len({c for c, _ in blocks}) == len(blocks)
    for c, gs in blocks:
        assert all(chrom.loc[g, "chromosome"] == c for g in gs)
        assert [start[g] for g in gs] == sorted(start[g] for g in gs)
    assert enc["attention_mask"][0].sum() == 1 + 50 + 2 * len(blocks)
    assert words(tok, enc, 1) == ["<cls>"]
    assert tok.embedding_matrix[tok.vocab.token_to_id["G1"]].tolist() == [4.0, 5.0, 6.0, 7.0]


def test_uce_draws_are_weighted_by_log1p_counts():
    genes = ["P", "Q"]
    chrom = pd.DataFrame({"chromosome": ["1", "1"], "start": [1, 2]}, index=genes)
    tok = plm.UCETokenizer(gene_embeddings=pd.DataFrame(np.eye(2), index=genes), chromosomes=chrom,
                           sample_size=20_000, pad_length=20_003)
    w = words(tok, tok(cells([[1, 3]], genes=genes)))
    share = w.count("Q") / 20_000  # log1p(3) / (log1p(1) + log1p(3)) = 2/3
    assert share == pytest.approx(2 / 3, abs=0.01)


# ------------------------------------------------------------------------------------------ CellPLM
def test_cellplm_cells_as_tokens_and_groups():
    emb = pd.DataFrame(np.eye(2), index=["A", "B"])
    x = [[1, 1], [0, 2], [2, 0], [1, 0], [0, 1]]
    adata = cells(x, genes=["A", "B"], obs={"sample": ["s1", "s2", "s1", "s1", "s2"]})
    tok = plm.CellPLMTokenizer(gene_embeddings=emb, group_key="sample", max_cells=2)
    enc = tok(adata, batch_size=2)  # grouping is over all cells, whatever the batches
    assert enc.cell_index.tolist() == [[0, 2], [3, -1], [1, 4]]
    assert enc["attention_mask"].tolist() == [[1, 1], [1, 0], [1, 1]]
    assert enc["inputs_embeds"][0, 0].tolist() == pytest.approx([np.log1p(5000.0)] * 2, rel=1e-6)
    assert enc["inputs_embeds"][2, 0].tolist() == pytest.approx([0.0, np.log1p(10000.0)], rel=1e-6)
    # log-normalised input is used as given
    logx = cells([[0.5, 1.5]], genes=["A", "B"])
    assert plm.CellPLMTokenizer(gene_embeddings=emb)(logx)["inputs_embeds"][0, 0].tolist() == [0.5, 1.5]
    # random gene embeddings when none are given: seeded
    r1 = plm.CellPLMTokenizer(dim=8, seed=3)(adata)["inputs_embeds"]
    assert np.array_equal(r1, plm.CellPLMTokenizer(dim=8, seed=3)(adata)["inputs_embeds"])


# ------------------------------------------------------------------------------------------ Nicheformer / scMulan
def test_rank_metadata_tokens_and_group_statistics():
    adata = cells([CELL, CELL], obs={"assay": ["10x", "smart"]})
    stats = {"A": 1, "B": 8, "C": 100, "D": 1, "E": 1}
    tok = plm.RankMetadataTokenizer(metadata_keys=["assay"], gene_statistics=stats, max_length=3)
    enc = tok(adata)
    assert words(tok, enc, 0) == ["<assay=10x>", "E", "D"]
    assert words(tok, enc, 1) == ["<assay=smart>", "E", "D"]
    unseen = tok(cells([CELL], obs={"assay": ["visium"]}))
    assert words(tok, unseen)[0] == "<assay=?>" and unseen.report["n_unknown_metadata_values"] == 1
    # per-technology means: in "x" cells gene B is high, so B is divided by more there
    ref = cells([[0, 8, 1, 0, 0], [0, 8, 1, 0, 0], [0, 1, 1, 0, 0], [0, 1, 1, 0, 0]],
                obs={"tech": ["x", "x", "y", "y"]})
    grouped = plm.RankMetadataTokenizer(group_key="tech", with_values=True).fit(ref)
    enc = grouped(cells([[0, 2, 1, 0, 0], [0, 2, 1, 0, 0]], obs={"tech": ["x", "y"]}))
    assert words(grouped, enc, 0) == ["C", "B"] and words(grouped, enc, 1) == ["B", "C"]
    assert "values" in enc and enc["values"].shape == enc["input_ids"].shape


def test_scmulan_sentence():
    adata = cells([CELL], obs={"organ": ["blood"]})
    tok = plm.ScMulanTokenizer(metadata_keys=["organ"], task="generate", max_genes=2)
    enc = tok(adata)
    w = words(tok, enc)
    assert w[:3] == ["<task=generate>", "<organ=blood>", "E"] and w[3] in ("B", "D") and w[4] == "<eos>"
    assert enc["values"][0].tolist() == pytest.approx([0, 0, np.log1p(5500), np.log1p(2000), 0], rel=1e-6)
    with pytest.raises(C2TInputError, match="task must be one of"):
        plm.ScMulanTokenizer(task="chat")


# ------------------------------------------------------------------------------------------ all recipes
@pytest.mark.parametrize("name", list(all_tokenizers()))
def test_every_tokenizer_is_batch_independent_and_round_trips(name, small, tmp_path):
    tok = all_tokenizers()[name]
    full = tok(small)
    assert set(full) >= {"attention_mask"} and ("input_ids" in full or "inputs_embeds" in full)
    if name != "cellplm":  # one row per cell; a cell's tokens do not depend on its batch
        assert full["attention_mask"].shape[0] == small.n_obs
        for bs in (1, 2):
            part = tok(small, batch_size=bs)
            w = full["input_ids"].shape[1]
            assert np.array_equal(part["input_ids"][:, :w], full["input_ids"])
            assert np.array_equal(part["attention_mask"][:, :w], full["attention_mask"])
        assert full.cell_ids.tolist() == small.obs_names.tolist()
    tok.save(tmp_path / name)
    again = plm.load_tokenizer(tmp_path / name)
    assert again.vocab.token_to_id == tok.vocab.token_to_id
    out = again(small)
    for key in full:
        assert np.array_equal(np.asarray(out[key]), np.asarray(full[key])), key
    torch_out = tok(small, return_tensors="pt")
    assert type(torch_out["attention_mask"]).__name__ == "Tensor"


def test_gene_matching_and_obs_errors(small):
    tok = plm.TGPTTokenizer(genes=["A", "B", "Z"])
    enc = tok(small)
    assert enc.report["genes"]["n_matched"] == 2 and enc.report["genes"]["n_unmatched"] == 3
    assert enc.report["genes"]["unmatched_examples"] == ["C", "D", "E"]
    with pytest.raises(C2TInputError, match="none of the 5 genes"):
        plm.TGPTTokenizer(genes=["X", "Y"])(small)
    with pytest.raises(C2TInputError, match="'organ' not found in obs"):
        plm.ScMulanTokenizer(metadata_keys=["organ"])(small)
    with pytest.raises(C2TInputError, match="batch_size must be a positive integer"):
        tok(small, batch_size=0)
    with pytest.raises(C2TInputError, match="top_k must be a positive integer"):
        plm.TGPTTokenizer(top_k=0)
    with pytest.raises(C2TInputError, match=r"no c2t_tokenizer\.json"):
        plm.load_tokenizer(small.uns.get("nowhere", "/nonexistent"))


def test_h5ad_path_and_layer(small, tmp_path):
    small.layers["counts"] = small.X.copy()
    small.X = small.X * 0.5  # not counts
    path = tmp_path / "s.h5ad"
    small.write_h5ad(path)
    tok = plm.GeneformerTokenizer()
    with pytest.raises(C2TInputError, match="layer= the raw counts layer"):
        tok(path)
    enc = plm.GeneformerTokenizer()(path, layer="counts")
    assert enc["input_ids"].shape[0] == small.n_obs


def test_import_plm_is_light():
    code = "import sys, c2t.plm; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_docstring_examples_run():
    import doctest
    import importlib

    for mod in ("_encoding", "_vocab", "_encoder", "_scbert", "_geneformer", "_scgpt", "_tgpt", "_scfoundation",
                "_uce", "_cellplm", "_nicheformer", "_scmulan", "__init__"):
        module = importlib.import_module("c2t.plm" if mod == "__init__" else f"c2t.plm.{mod}")
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, mod
