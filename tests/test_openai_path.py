"""The OpenAI-compatible path against a real vLLM server on 127.0.0.1 (no fake clients).

Two servers start once for this module: all-MiniLM-L6-v2 with ``--runner pooling`` (``/v1/embeddings``) and
SmolLM2-135M-Instruct (``/v1/chat/completions``), both from registry packages. vLLM on a CPU takes minutes
to start; ``scripts/test.sh`` installs it in its own venv and sets ``C2T_VLLM_PYTHON``.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from c2t._errors import C2TInputError
from c2t.genes import (
    GeneDescriptions,
    OpenAIEmbeddingEncoder,
    SentenceTransformerEncoder,
    describe_genes_with_llm,
    embed_genes,
)
from c2t.models import minilm_path, smollm2_hf
from c2t.servers import VLLMServer, vllm_python

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(vllm_python() is None, reason="vLLM is not installed here; set C2T_VLLM_PYTHON (scripts/test.sh does)"),
]


@pytest.fixture(scope="module", autouse=True)
def api_key():
    old = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = "local-test-key"
    yield
    if old is None:
        del os.environ["OPENAI_API_KEY"]
    else:
        os.environ["OPENAI_API_KEY"] = old


@pytest.fixture(scope="module")
def embedding_server():
    with VLLMServer(minilm_path(), name="minilm", runner="pooling", max_model_len=256) as server:
        yield server


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory):
    model = smollm2_hf(os.environ.get("C2T_CACHE") or tmp_path_factory.mktemp("models"))
    with VLLMServer(model, name="smollm2", max_model_len=1024) as server:
        yield server


def test_server_embeddings_equal_local_sentence_transformers(embedding_server, tmp_path):
    texts = ["CD3D (CD3 delta subunit of T-cell receptor complex). Part of the TCR-CD3 complex.",
             "LYZ (lysozyme). An antibacterial enzyme of monocytes and macrophages.",
             "MS4A1 (membrane spanning 4-domains A1). A B-lymphocyte surface molecule."]
    remote = OpenAIEmbeddingEncoder("minilm", base_url=embedding_server.base_url, batch_size=2).encode(texts)
    local = SentenceTransformerEncoder(minilm_path()).encode(texts)
    cosine = (remote * local).sum(1) / np.linalg.norm(remote, axis=1) / np.linalg.norm(local, axis=1)
    assert remote.shape == (3, 384)
    assert cosine.min() > 0.999
    # the gene embeddings built through the server match the local ones, and the cache serves a rerun
    table = pd.DataFrame({"symbol": ["CD3D", "LYZ"], "full_name": ["CD3 delta", "lysozyme"], "synonyms": [None, None],
                          "summary": ["Part of the TCR-CD3 complex.", "An antibacterial enzyme."]})
    matched = GeneDescriptions.from_frame(table).match(["CD3D", "LYZ", "NOPE"])
    encoder = OpenAIEmbeddingEncoder("minilm", base_url=embedding_server.base_url)
    first = embed_genes(matched, encoder, cache_dir=tmp_path)
    assert first.has_text.tolist() == [True, True, False]
    assert first.manifest["encoder"] == f"openai:minilm@{embedding_server.base_url}"
    offline = OpenAIEmbeddingEncoder("minilm", base_url="http://127.0.0.1:9/v1", max_retries=0)
    offline.id = encoder.id  # same model: every text is cached, so no request is made
    again = embed_genes(matched, offline, cache_dir=tmp_path)
    np.testing.assert_array_equal(first.vectors, again.vectors)


def test_llm_descriptions_are_cached_and_resumable(chat_server, tmp_path):
    genes = ["CD3D", "LYZ"]
    first = describe_genes_with_llm(genes, model="smollm2", base_url=chat_server.base_url, cache_dir=tmp_path,
                                    max_tokens=48, concurrency=2)
    assert first["gene"].tolist() == genes
    assert all(len(text.split()) >= 5 for text in first["text"])
    # a rerun asks nothing: an unreachable server is never contacted
    again = describe_genes_with_llm(genes, model="smollm2", base_url="http://127.0.0.1:9/v1", cache_dir=tmp_path,
                                    max_tokens=48, max_retries=0)
    assert again["text"].tolist() == first["text"].tolist()
    # a line cut short by a crash is ignored and that gene is asked again
    cache = next(tmp_path.glob("llm-descriptions-*.jsonl"))
    cache.write_text(cache.read_text().splitlines()[0] + "\n" + '{"gene": "LYZ", "te')
    resumed = describe_genes_with_llm(genes, model="smollm2", base_url=chat_server.base_url, cache_dir=tmp_path,
                                      max_tokens=48)
    assert resumed["text"].tolist() == first["text"].tolist()  # temperature 0 + seed: same answer


def test_unreachable_endpoint_and_missing_key(tmp_path, monkeypatch):
    with pytest.raises(C2TInputError, match=r"could not reach .*127\.0\.0\.1:9.* after 1 retries"):
        OpenAIEmbeddingEncoder("minilm", base_url="http://127.0.0.1:9/v1", max_retries=1, timeout=5).encode(["x"])
    with pytest.raises(C2TInputError, match="could not reach"):
        describe_genes_with_llm(["CD3D"], model="m", base_url="http://127.0.0.1:9/v1", cache_dir=tmp_path, max_retries=1)
    assert tmp_path.exists()  # the cache folder is kept
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(C2TInputError, match="OPENAI_API_KEY is not set"):
        OpenAIEmbeddingEncoder("minilm", base_url="http://127.0.0.1:9/v1")


def test_cli_embed_genes_through_the_server(embedding_server, tmp_path):
    from typer.testing import CliRunner

    from c2t.cli import app
    from c2t.genes import GeneEmbeddings

    table = tmp_path / "genes.csv"
    pd.DataFrame({"symbol": ["CD3D", "LYZ", "MS4A1"], "full_name": ["CD3 delta", "lysozyme", "CD20"],
                  "synonyms": ["T3D", "LZM", "CD20"], "summary": ["TCR part.", "Enzyme.", None]}).to_csv(table, index=False)
    genes = tmp_path / "genes.txt"
    genes.write_text("CD3D\nLZM\nMS4A1\n")
    result = CliRunner().invoke(app, ["embed", "genes", "--descriptions", str(table), "--genes-from", str(genes),
                                      "--openai-model", "minilm", "--base-url", embedding_server.base_url,
                                      "--cache-dir", str(tmp_path / "cache"), "-o", str(tmp_path / "ge")])
    assert result.exit_code == 0, result.output
    ge = GeneEmbeddings.load(tmp_path / "ge")
    assert ge.genes.tolist() == ["CD3D", "LZM", "MS4A1"]
    assert ge.has_text.tolist() == [True, True, False]  # LZM is LYZ's alias; MS4A1 has no summary
    assert "api" not in result.output.lower() or "local-test-key" not in result.output


def test_scchat_cluster_annotation_through_the_chat_server(chat_server, pbmc3k, tmp_path):
    """Leiden clusters of real pbmc3k cells, their Wilcoxon markers, and SmolLM2 naming each from a label list."""
    import json

    from c2t.generate import annotate_clusters

    adata = pbmc3k[np.random.default_rng(0).choice(pbmc3k.n_obs, 600, replace=False)].copy()
    labels = ["T cell", "B cell", "NK cell", "Monocyte", "Dendritic cell", "Platelet"]
    log = tmp_path / "exchange.jsonl"
    result = annotate_clusters(adata, base_url=chat_server.base_url, served_model="smollm2", labels=labels,
                               tissue="human blood", resolution=0.5, n_markers=8, log=log)
    clusters = sorted(adata.obs["leiden"].astype(str).unique())
    assert sorted(result) == clusters and len(clusters) >= 3
    assert set(result.values()) <= {*labels, "unknown"}
    assert (adata.obs["c2t_scchat"].astype(str) == adata.obs["leiden"].astype(str).map(result)).all()
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["cluster"] for e in entries] == clusters
    for entry in entries:
        assert len(entry["markers"]) == 8 and ", ".join(entry["markers"]) in entry["prompt"]
        assert entry["label"] == result[entry["cluster"]] and isinstance(entry["answer"], str)
    markers_b = adata.uns["c2t_scchat"]["clusters"]
    assert any("CD79A" in m["markers"] or "MS4A1" in m["markers"] for m in markers_b.values())  # a B-cell cluster
