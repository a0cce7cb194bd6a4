"""Positions researchers think in: the tokens of a chat turn, found from the tokenizer's chat template.

``ChatMarkers.from_tokenizer`` renders a short conversation with the template and reads off the token
sequences that open an assistant turn, open a user turn, and end a turn. ``role_mask`` then finds,
in any batch of token ids (padded on either side), the tokens inside those turns, with tensor ops
only (no Python branching on data), so a compiled model does not recompile per batch.

Roles (``ROLES``):
- ``"assistant"``: the content of every assistant turn (not its header, not the end-of-turn token).
  Inside ``generate``, every generated token is the assistant's.
- ``"last_user_turn"``: the content of each row's last user turn (the request being answered).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from einops import rearrange
from jaxtyping import Bool, Int
from torch import Tensor

Role = Literal["assistant", "last_user_turn"]
ROLES: tuple[Role, ...] = ("assistant", "last_user_turn")
_U1, _A1, _U2 = "\x1fsteerable-user-1\x1f", "\x1fsteerable-assistant-1\x1f", "\x1fsteerable-user-2\x1f"


@dataclass(frozen=True)
class ChatMarkers:
    """The token ids that open an assistant turn, open a user turn, and end a turn."""

    assistant_header: tuple[int, ...]
    user_header: tuple[int, ...]
    end_of_turn: tuple[int, ...]

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> ChatMarkers:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "role positions ('assistant', 'last_user_turn') read the tokenizer's chat template, and this "
                "tokenizer has none: select tokens with a boolean mask or min_token_index instead"
            )

        def render(messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
            return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt))

        user = [{"role": "user", "content": _U1}]
        conversation = [*user, {"role": "assistant", "content": _A1}, {"role": "user", "content": _U2}]
        alone, prompted, full = render(user), render(user, True), render(conversation)
        if not prompted.startswith(alone) or any(marker not in full for marker in (_U1, _A1, _U2)):
            raise ValueError("could not read the turn markers from this chat template: it does not echo messages")
        assistant = prompted[len(alone) :]  # what add_generation_prompt appends: the assistant header
        between_user_and_assistant = full[full.index(_U1) + len(_U1) : full.index(_A1)]
        between_assistant_and_user = full[full.index(_A1) + len(_A1) : full.index(_U2)]
        if not assistant or not between_user_and_assistant.endswith(assistant):
            raise ValueError("could not find the assistant header in this chat template")
        end = between_user_and_assistant[: -len(assistant)]
        if not end or not between_assistant_and_user.startswith(end):
            raise ValueError("could not find the end-of-turn marker in this chat template")
        user_header = full[: full.index(_U2)][-(len(between_assistant_and_user) - len(end)) :]

        def ids(text: str) -> tuple[int, ...]:
            return tuple(int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"])

        rendered = ids(render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]))

        def header_ids(text: str) -> tuple[int, ...]:
            # the header with its trailing newline, if it tokenizes the same way inside a conversation;
            # else without it (the newline merged with the content's first token)
            whole = ids(text)
            found = any(tuple(rendered[i : i + len(whole)]) == whole for i in range(len(rendered)))
            return whole if found else ids(text.rstrip())

        # the end marker is its first token (e.g. <|im_end|>): what follows it may merge with the next turn
        markers = cls(header_ids(assistant), header_ids(user_header), ids(end.strip())[:1])
        if not all((markers.assistant_header, markers.user_header, markers.end_of_turn)):
            raise ValueError("this chat template's turn markers tokenize to nothing; select tokens with a mask instead")
        return markers

    def tensors(self, role: Role) -> dict[str, Tensor]:
        header = self.assistant_header if role == "assistant" else self.user_header
        return {
            "header": torch.tensor(header, dtype=torch.long),
            "end": torch.tensor(self.end_of_turn, dtype=torch.long),
        }


def role_mask(
    input_ids: Int[Tensor, "batch seq"], header: Int[Tensor, " k"], end: Int[Tensor, " j"], role: Role
) -> Bool[Tensor, "batch seq"]:
    """Which tokens of ``input_ids`` lie inside a turn opened by ``header`` and closed by ``end``
    (content only). For ``last_user_turn``, only each row's last such turn."""
    batch, seq = input_ids.shape
    k = header.shape[0]
    header = header.to(input_ids.device)
    if seq >= k:
        windows = input_ids.unfold(1, k, 1)  # [batch, seq - k + 1, k]: the k tokens ending at each column
        ends_header = (windows == header).all(-1)
        ends_header = torch.cat([ends_header.new_zeros(batch, k - 1), ends_header], dim=1)
    else:
        ends_header = torch.zeros(batch, seq, dtype=torch.bool, device=input_ids.device)
    # a turn's content starts one token after its header ends
    opens = torch.cat([ends_header.new_zeros(batch, 1), ends_header[:, :-1]], dim=1)
    closes = (rearrange(input_ids, "b s -> b s 1") == end.to(input_ids.device)).any(-1)
    column = torch.arange(seq, device=input_ids.device).expand(batch, seq)
    none = torch.full_like(column, -1)
    last_open = torch.where(opens, column, none).cummax(1).values
    last_close = torch.where(closes, column, none).cummax(1).values
    inside = last_open > last_close  # opened after the last close, and not the closing token itself
    if role == "last_user_turn":
        final_open = rearrange(torch.where(opens, column, none).max(1).values, "b -> b 1")
        inside = inside & (last_open == final_open)
    return inside


def role_positions(tokenizer: Any, input_ids: Int[Tensor, "batch seq"], role: Role) -> Bool[Tensor, "batch seq"]:
    """``role_mask`` for a tokenizer's chat template: e.g. to pick the assistant's tokens out of a
    recording (``recording[layer][role_positions(tokenizer, ids, "assistant")]``)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    tensors = ChatMarkers.from_tokenizer(tokenizer).tensors(role)
    return role_mask(input_ids, tensors["header"], tensors["end"], role)


def chat_prompt(tokenizer: Any, user: str) -> str:
    """``user`` as one chat turn, ending where the assistant's reply starts."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": user}]
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return f"Question: {user}\nAnswer:"
