"""What a call returns: text, why it stopped, token counts, and who proposed each token."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

__all__ = [
    "Candidate",
    "GenerationResult",
    "Provenance",
    "StreamChunk",
    "TokenProvenance",
    "Usage",
]

FinishReason = Literal["stop", "length"]


class Usage(BaseModel):
    """Token counts. ``input_tokens`` is the primary member's count of the prompt."""

    input_tokens: int
    output_tokens: int = Field(description="Union strings chosen (END not counted).")
    input_tokens_per_member: dict[str, int]
    output_tokens_per_member: dict[str, int] = Field(
        description="Tokens each member's tokenizer needs for the returned text."
    )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class Candidate(BaseModel):
    """One string of the ensemble's mixed distribution at a step, with its log-probability."""

    text: str = Field(
        description="Its bytes, decoded with U+FFFD for partial characters; the end of the "
        "answer (END) shows as the primary member's end-of-sequence token."
    )
    logprob: float = Field(
        description="Natural log of its mixed probability (-inf where it underflows to 0)."
    )
    end: bool = Field(default=False, description="It is END, the end of the answer.")
    bytes: list[int] = Field(default_factory=list, description="Its exact bytes (END: none).")


class TokenProvenance(BaseModel):
    """One chosen string and how the members saw it."""

    text: str = Field(description="The chosen bytes, decoded with U+FFFD for partial characters.")
    bytes: list[int] = Field(
        default_factory=list, description="The chosen bytes themselves (``text`` may be lossy)."
    )
    logprob: float | None = Field(
        default=None,
        description=(
            "Natural log of its probability under the mixed distribution it was chosen from "
            "(the members' union probabilities, weighted; the primary's alone where ``gated``). "
            "None where a grammar had to choose a string outside the union."
        ),
    )
    top: list[Candidate] | None = Field(
        default=None,
        description=(
            "Only with ``top_logprobs`` N > 0: the N most likely strings of that mixed "
            "distribution, most likely first (fewer where the union had fewer strings)."
        ),
    )
    proposers: list[str] = Field(description="Members that had this string in their own top-k.")
    probs: dict[str, float] = Field(description="Each member's probability for it over the union.")
    winner: str = Field(description="The member that gave it the highest probability.")
    gated: bool = Field(
        default=False,
        description=(
            "Taken from the primary member alone (its top-1 probability reached the gate); "
            "``probs`` then holds the primary's probability over its own candidates only."
        ),
    )


class Provenance(BaseModel):
    """Per-token provenance and its aggregates, so users can see whether the ensemble helps."""

    members: list[str]
    tokens: list[TokenProvenance] = Field(default_factory=list)
    agreement_rate: float = Field(
        default=0.0,
        description=(
            "Share of voted decisions (the final END too) where every member's top-1 agreed."
        ),
    )
    gated_share: float = Field(
        default=0.0,
        description="Share of decisions (the final END too) the primary took alone (``gate``).",
    )
    win_share: dict[str, float] = Field(
        default_factory=dict,
        description="Share of tokens each member gave the highest probability.",
    )
    proposal_share: dict[str, float] = Field(
        default_factory=dict, description="Share of tokens that were in each member's top-k."
    )

    def summary(self) -> dict[str, object]:
        """The aggregates alone (what response metadata carries)."""
        return {
            "members": self.members,
            "agreement_rate": self.agreement_rate,
            "win_share": self.win_share,
            "proposal_share": self.proposal_share,
            "gated_share": self.gated_share,
        }


class GenerationResult(BaseModel):
    text: str
    finish_reason: FinishReason
    usage: Usage
    provenance: Provenance


class StreamChunk(BaseModel):
    """A piece of streamed text. The last chunk has ``finish_reason`` and the full ``result``."""

    text: str
    finish_reason: FinishReason | None = None
    result: GenerationResult | None = None
    row: int = Field(
        default=0,
        description="The row it belongs to, where one request streams several (0..n-1).",
    )
