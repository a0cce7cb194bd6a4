"""The request side (the process that takes requests): bad steering is refused before it reaches the
engine, and a steered request's steering goes into its prefix-cache key.

``InputProcessor.process_inputs`` is wrapped: the request's ``extra_args["steering"]`` is resolved against
the model (steerable.serving.request_spec) and stored, resolved, as ``extra_args["steering_resolved"]``;
a bad one raises :class:`SteeringRequestError` (a vLLM validation error: an exception offline, HTTP 400 on
the server), and no other request is affected. The cache salt: steered KV blocks are never shared with
requests steered differently or not at all. Requests with the same steering share their blocks (a block's
KV depends only on its tokens, their positions and the steering); a conditional steering's gate depends on
the whole prompt, so such a request gets a salt of its own.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from vllm.exceptions import VLLMValidationError

from steerable.serving.catalog import Catalog, SteeringSpecError
from steerable.serving.request_spec import resolve
from steerable.serving.roles import RoleFinder
from steerable.serving.whole_prompts import check_prompt_fits


class SteeringRequestError(VLLMValidationError, ValueError):
    """A request's steering was refused; the message says why."""


class Frontend:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog, self.roles = catalog, RoleFinder()

    def admit(self, request: Any, vllm_config: Any, tokenizer: Any = None) -> None:
        """Resolve the steering of an EngineCoreRequest in place, or raise SteeringRequestError."""
        params = request.sampling_params
        extra = getattr(params, "extra_args", None) if params is not None else None
        if not extra or "steering" not in extra:
            return
        text = vllm_config.model_config.hf_text_config
        try:
            resolved = resolve(extra["steering"], self.catalog, int(text.num_hidden_layers), int(text.hidden_size))
            resolved = self.roles.resolve(resolved, list(request.prompt_token_ids or ()), tokenizer)
            as_json = [s.to_json() for s in resolved]
            check_prompt_fits(as_json, len(request.prompt_token_ids or ()), vllm_config.scheduler_config)
        except SteeringSpecError as error:
            raise SteeringRequestError(f"steering refused: {error}") from None
        extra = {k: v for k, v in extra.items() if k != "steering"}
        if resolved:
            extra["steering_resolved"] = as_json
            request.cache_salt = self.salt(request.cache_salt, extra["steering_resolved"])
        params.extra_args = extra

    @staticmethod
    def salt(user_salt: str | None, resolved: list[dict[str, Any]]) -> str:
        if any(s["conditions"] for s in resolved):
            own = uuid.uuid4().hex  # the gate depends on the whole prompt: share with nobody
        else:
            own = hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:32]
        return f"{user_salt or ''}|steerable:{own}"


FRONTEND: Frontend | None = None


def frontend() -> Frontend:
    global FRONTEND
    if FRONTEND is None:
        FRONTEND = Frontend(Catalog.from_env())
    return FRONTEND
