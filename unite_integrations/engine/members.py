"""A loaded member: model, tokenizer, byte vocabulary, limits, and how it renders prompts.

Each member renders a conversation with its *own* chat template: the generated text is shared, the
prompts are not. A member without a template (a base model) uses the plain fallback below, and the
engine then also stops on ``FALLBACK_STOP`` so a base model does not write the user's next turn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ContextWindowError, InputError
from .config import MemberSpec
from .vocab import Vocab

__all__ = ["FALLBACK_STOP", "LoadedMember", "Message", "render_fallback"]

Message = Mapping[str, Any]
ROLES = ("system", "user", "assistant", "tool")
FALLBACK_STOP = ("\nUser:",)
_FALLBACK_NAMES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


def render_fallback(messages: Sequence[Message]) -> str:
    """``System: ...`` / ``User: ...`` / ``Assistant:`` blocks: what base models continue best."""
    blocks = [f"{_FALLBACK_NAMES[m['role']]}: {m['content']}" for m in messages]
    return "\n\n".join([*blocks, "Assistant:"])


def check_messages(messages: Sequence[Message]) -> None:
    if not messages:
        raise InputError("the conversation is empty: pass at least one message")
    for n, m in enumerate(messages):
        role = m.get("role") if isinstance(m, Mapping) else None
        if role not in ROLES:
            raise InputError(
                f"message {n} has role {role!r}; use one of {', '.join(ROLES)} "
                "(as dicts like {'role': 'user', 'content': '...'})"
            )
        if not isinstance(m.get("content"), str):
            raise InputError(f"message {n} ({role}) has no string 'content'")


@dataclass
class LoadedMember:
    spec: MemberSpec
    name: str
    model: Any
    tokenizer: Any
    vocab: Vocab
    context_window: int
    pad_id: int

    @property
    def has_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def encode_prompt(self, prompt: str | Sequence[Message], tools: Any = None) -> list[int]:
        """Token ids of a raw prompt (with the tokenizer's BOS) or of a rendered conversation."""
        if isinstance(prompt, str):
            if not prompt:
                raise InputError("a prompt is the empty string: pass some text")
            ids = list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])
        else:
            check_messages(prompt)
            if self.has_template:
                text = self.tokenizer.apply_chat_template(
                    [dict(m) for m in prompt],
                    tools=tools,
                    add_generation_prompt=True,
                    tokenize=False,
                )
                ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            else:
                ids = list(
                    self.tokenizer(render_fallback(prompt), add_special_tokens=True)["input_ids"]
                )
        if len(ids) >= self.context_window:
            raise ContextWindowError(
                f"member {self.name!r}: the prompt is {len(ids)} tokens but its context window "
                f"is {self.context_window}; shorten the prompt (or set context_window on the "
                "member if the model supports more)"
            )
        return ids
