"""A loaded member: model, tokenizer, byte vocabulary, limits, and how it renders prompts.

Each member renders a conversation with its *own* chat template: the generated text is shared, the
prompts are not. A member without a template (a base model) uses the plain fallback below, and the
engine then also stops on ``FALLBACK_STOP`` so a base model does not write the user's next turn. A
template without tool support gets the tool-call format written out (``tool_format``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ContextWindowError, InputError
from .config import MemberSpec
from .inputs import check_messages, check_text
from .tool_format import portable_messages
from .vocab import Vocab

__all__ = ["FALLBACK_STOP", "LoadedMember", "Message", "render_fallback"]

Message = Mapping[str, Any]
FALLBACK_STOP = ("\nUser:",)
_FALLBACK_NAMES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


def render_fallback(messages: Sequence[Message]) -> str:
    """``System: ...`` / ``User: ...`` / ``Assistant:`` blocks: what base models continue best."""
    blocks = [f"{_FALLBACK_NAMES[m['role']]}: {m['content']}" for m in messages]
    return "\n\n".join([*blocks, "Assistant:"])


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

    @property
    def native_tools(self) -> bool:
        """Whether the chat template renders ``tools`` and tool messages itself."""
        template = getattr(self.tokenizer, "chat_template", None) or ""
        return isinstance(template, str) and "tools" in template and "tool_calls" in template

    def encode_prompt(
        self, prompt: str | Sequence[Message], tools: Sequence[Mapping[str, Any]] | None = None
    ) -> list[int]:
        """Token ids of a raw prompt (with the tokenizer's BOS) or of a rendered conversation."""
        if isinstance(prompt, str):
            if not check_text("the prompt", prompt):
                raise InputError("a prompt is the empty string: pass some text")
            ids = list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])
        else:
            prompt = check_messages(prompt)  # callers other than the engine (adapters) too
            if self.has_template and self.native_tools:
                messages = [dict(m) for m in prompt]
            else:
                messages = portable_messages(prompt, tools)
                tools = None
            if self.has_template:
                try:
                    text = self.tokenizer.apply_chat_template(
                        messages, tools=tools, add_generation_prompt=True, tokenize=False
                    )
                except Exception as e:  # jinja's TemplateError, raise_exception(...) in templates
                    raise InputError(
                        f"member {self.name!r}: its chat template cannot render this "
                        f"conversation ({e}); change the messages (e.g. roles or their order) or "
                        "give the member a chat_template"
                    ) from e
                ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            else:
                ids = list(
                    self.tokenizer(render_fallback(messages), add_special_tokens=True)["input_ids"]
                )
        if len(ids) >= self.context_window:
            raise ContextWindowError(
                f"member {self.name!r}: the prompt is {len(ids)} tokens but its context window "
                f"is {self.context_window}; shorten the prompt (or set context_window on the "
                "member if the model supports more)"
            )
        return ids
