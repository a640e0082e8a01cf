"""What a ``ChatResult`` becomes in a response body, on every endpoint: the assistant message,
OpenAI's log-probabilities (chat and legacy completions), ``usage``, and the ``unite`` extension
(provenance, per-member usage, per-token provenance on request); and the server's count of
answers (``count_answers``).
"""

from __future__ import annotations

import json
from typing import Any

from ..chat import ChatResult
from ..engine.results import Candidate, TokenProvenance
from .metrics import Metrics

__all__ = [
    "FLOOR_LOGPROB",
    "assistant_message",
    "chat_logprobs",
    "completion_logprobs",
    "count_answers",
    "extension",
    "extensions",
    "usage_of",
]

#: OpenAI's log-probability for a token whose probability is 0 (or that the union did not hold).
FLOOR_LOGPROB = -9999.0


def _logprob(value: float | None) -> float:
    """A log-probability as JSON can carry it: 0 probability (or none) is OpenAI's -9999.0."""
    return FLOOR_LOGPROB if value is None or value < FLOOR_LOGPROB else value


def _candidate(c: Candidate) -> dict[str, Any]:
    data = list(c.text.encode()) if c.end else c.bytes
    return {"token": c.text, "logprob": _logprob(c.logprob), "bytes": data}


def chat_logprobs(result: ChatResult, top: int) -> dict[str, Any]:
    """OpenAI's chat ``logprobs``: each generated token (a union string) with its
    log-probability under the mixed distribution it was chosen from, and the ``top`` most
    likely strings of that distribution, most likely first (fewer where the union had fewer)."""
    content = [
        {
            "token": t.text,
            "logprob": _logprob(t.logprob),
            "bytes": t.bytes,
            "top_logprobs": [_candidate(c) for c in (t.top or [])[:top]],
        }
        for t in result.tokens
    ]
    return {"content": content, "refusal": None}


def completion_logprobs(result: ChatResult, top: int) -> dict[str, Any]:
    """The legacy completions ``logprobs``: parallel lists, and per token a dict of the ``top``
    most likely strings and the chosen one (so up to ``top`` + 1 entries, as OpenAI's)."""
    offsets, at = [], 0
    for t in result.tokens:
        offsets.append(at)
        at += len(t.text)
    return {
        "tokens": [t.text for t in result.tokens],
        "token_logprobs": [_logprob(t.logprob) for t in result.tokens],
        "top_logprobs": [_top_dict(t, top) for t in result.tokens],
        "text_offset": offsets,
    }


def _top_dict(t: TokenProvenance, top: int) -> dict[str, float]:
    """String -> log-probability; two strings shown alike (partial characters as U+FFFD) keep
    the likelier's figure."""
    out: dict[str, float] = {}
    for c in (t.top or [])[:top]:
        out.setdefault(c.text, _logprob(c.logprob))
    out.setdefault(t.text, _logprob(t.logprob))
    return out


def assistant_message(result: ChatResult) -> dict[str, Any]:
    """A chat choice's ``message``: its content and tool calls."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": result.content if result.content or not result.tool_calls else None,
    }
    if result.tool_calls:
        message["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {
                    "name": c.name,
                    "arguments": json.dumps(c.arguments, ensure_ascii=False),
                },
            }
            for c in result.tool_calls
        ]
    return message


def extensions(results: list[ChatResult], tokens: bool) -> dict[str, Any] | list[dict[str, Any]]:
    """A response's ``unite`` field: one choice's object, or with several choices (``n`` > 1, or
    a list of prompts) a list of them, one per choice in ``index`` order."""
    if len(results) == 1:
        return extension(results[0], tokens)
    return [extension(r, tokens) for r in results]


def extension(result: ChatResult, tokens: bool) -> dict[str, Any]:
    """The ``unite`` field: the ensemble's provenance (per token only when asked for)."""
    out = {k: v for k, v in result.provenance.items() if k != "tokens"}
    out["member_usage"] = {
        "input_tokens": dict(result.usage.input_tokens_per_member),
        "output_tokens": dict(result.usage.output_tokens_per_member),
    }
    if tokens:  # through JSON: a log-probability of -inf becomes null
        out["tokens"] = [json.loads(t.model_dump_json()) for t in result.tokens]
    return out


def usage_of(results: list[ChatResult], n: int = 0) -> dict[str, int]:
    """OpenAI's ``usage`` of choices (``n`` per prompt, prompt-major; 0: all of one prompt):
    each prompt counted once, as OpenAI does, and every choice's completion tokens."""
    n = n or len(results)
    prompt = sum(r.usage.input_tokens for r in results[::n])
    completion = sum(r.usage.output_tokens for r in results)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def count_answers(metrics: Metrics, results: list[ChatResult], n: int = 0) -> None:
    """Count answers (``n`` choices per prompt, prompt-major; 0: one prompt): each prompt's
    tokens once, each choice's output."""
    n = n or len(results)
    for k, result in enumerate(results):
        metrics.answer(
            result.usage.input_tokens if k % n == 0 else 0,
            result.usage.output_tokens,
            float(result.provenance.get("agreement_rate", 0.0)),
        )
