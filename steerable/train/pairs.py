"""What vectors are trained from: a contrastive pair of texts, and where in each text to read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

#: Where to read a text: a token index (negative from the end of the unpadded text), a ``slice``
#: of token indices (activations averaged over the span), a chat role (``"assistant"``,
#: ``"last_user_turn"``: that turn's tokens, averaged), or a callable on the text returning one.
ReadIndex = int | slice | str | Callable[[str], int | slice | str]


@dataclass(frozen=True)
class ContrastivePair:
    """A positive and a negative text; per-pair read indices override the ``read_token_index`` default."""

    positive: str
    negative: str
    read_positive_token_index: int | slice | str | None = None
    read_negative_token_index: int | slice | str | None = None
