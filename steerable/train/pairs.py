"""What vectors are trained from: a contrastive pair of texts, and where in each text to read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Where to read a text: a token index (negative from the end of the unpadded text), a ``slice``
#: of token indices (activations averaged over the span), a chat role (``"assistant"``,
#: ``"last_user_turn"``: that turn's tokens, averaged), or a callable on the text returning one.
ReadIndex = int | slice | str | Callable[[str], int | slice | str]


@dataclass(frozen=True, init=False)
class ContrastivePair:
    """A positive and a negative text; per-pair read indices override the ``read_token_index`` default.

    steering-vectors' spellings ``positive_str=`` / ``negative_str=`` are accepted too."""

    positive: str
    negative: str
    read_positive_token_index: int | slice | str | None = None
    read_negative_token_index: int | slice | str | None = None

    def __init__(
        self,
        positive: str | None = None,
        negative: str | None = None,
        read_positive_token_index: int | slice | str | None = None,
        read_negative_token_index: int | slice | str | None = None,
        *,
        positive_str: str | None = None,
        negative_str: str | None = None,
    ) -> None:
        for ours, theirs, name in ((positive, positive_str, "positive"), (negative, negative_str, "negative")):
            if ours is not None and theirs is not None:
                raise TypeError(f"give {name}= or {name}_str= (steering-vectors' spelling), not both")
        positive = positive if positive is not None else positive_str
        negative = negative if negative is not None else negative_str
        if positive is None or negative is None:
            raise TypeError("ContrastivePair needs a positive and a negative text: ContrastivePair(positive, negative)")
        object.__setattr__(self, "positive", positive)
        object.__setattr__(self, "negative", negative)
        object.__setattr__(self, "read_positive_token_index", read_positive_token_index)
        object.__setattr__(self, "read_negative_token_index", read_negative_token_index)


def as_pair(sample: Any) -> ContrastivePair | None:
    """Another library's sample as a pair, or None if it is not one: steering-vectors'
    ``SteeringVectorTrainingSample`` (``positive_str``, ``negative_str``, read indices), repeng's
    ``DatasetEntry`` and CAST's ``ContrastivePair`` (``positive``, ``negative``)."""
    if isinstance(sample, ContrastivePair):
        return sample
    if isinstance(getattr(sample, "positive_str", None), str) and isinstance(
        getattr(sample, "negative_str", None), str
    ):
        return ContrastivePair(
            sample.positive_str,
            sample.negative_str,
            getattr(sample, "read_positive_token_index", None),
            getattr(sample, "read_negative_token_index", None),
        )
    if isinstance(getattr(sample, "positive", None), str) and isinstance(getattr(sample, "negative", None), str):
        return ContrastivePair(sample.positive, sample.negative)
    return None
