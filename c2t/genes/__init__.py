"""Gene text: descriptions (a table such as NCBI summaries, or written by an LLM) and their embeddings.

>>> import pandas as pd
>>> table = pd.DataFrame({"symbol": ["CD3D"], "full_name": ["CD3 delta"], "synonyms": [None],
...                       "summary": ["Part of the T cell receptor."]})
>>> GeneDescriptions.from_frame(table).match(["CD3D"])["text"].tolist()
['CD3D (CD3 delta). Part of the T cell receptor.']
"""

from c2t.genes._descriptions import GeneDescriptions, load_descriptions
from c2t.genes._embeddings import GeneEmbeddings, embed_genes
from c2t.genes._encoders import OpenAIEmbeddingEncoder, SentenceTransformerEncoder, encode_cached
from c2t.genes._llm import DEFAULT_GENE_PROMPT, describe_genes_with_llm

__all__ = [
    "DEFAULT_GENE_PROMPT",
    "GeneDescriptions",
    "GeneEmbeddings",
    "OpenAIEmbeddingEncoder",
    "SentenceTransformerEncoder",
    "describe_genes_with_llm",
    "embed_genes",
    "encode_cached",
    "load_descriptions",
]
