"""A conditional steering of prompt tokens gets its whole prompt in one step.

``SteerableModel.generate`` decides a condition on the whole prompt and then steers every prompt token
after the condition's layer. With chunked prefill, vLLM would run a prompt's first chunk through every
layer before the rest of the prompt is seen, so those tokens could not be steered by a decision that does
not exist yet. So the scheduler (engine-core process) holds back such a request until a step has room for
its whole prompt, and, like vLLM's own scheduling without chunked prefill, holds back the waiting requests
behind it in that step too (first come, first served: it cannot be starved by later arrivals). Requests whose
conditional steerings cover only generated tokens, or that have none, are chunked as before.

A prompt that can never fit one step (longer than ``max_num_batched_tokens``, or than a set
``long_prefill_token_threshold``) is refused when the request arrives (:func:`check_prompt_fits`).
"""

from __future__ import annotations

import functools
from typing import Any

from steerable.serving.catalog import SteeringSpecError


def needs_whole_prompt(resolved: list[dict[str, Any]] | None) -> bool:
    """Whether a request's resolved steerings include a conditional one that steers prompt tokens."""
    return any(s["conditions"] and s["positions"] != "generated" for s in resolved or ())


def step_room(scheduler_config: Any) -> int:
    """The most prompt tokens one step can schedule for one request."""
    room = int(scheduler_config.max_num_batched_tokens)
    if scheduler_config.max_num_scheduled_tokens is not None:
        room = min(room, int(scheduler_config.max_num_scheduled_tokens))
    threshold = int(scheduler_config.long_prefill_token_threshold or 0)
    return min(room, threshold) if threshold > 0 else room


def check_prompt_fits(resolved: list[dict[str, Any]], prompt_len: int, scheduler_config: Any) -> None:
    """Refuse a request whose conditional prompt steering could never get its prompt in one step."""
    room = step_room(scheduler_config)
    if needs_whole_prompt(resolved) and prompt_len > room:
        raise SteeringSpecError(
            f"a conditional steering of prompt tokens needs the whole prompt in one step, but the prompt has "
            f"{prompt_len} tokens and a step takes at most {room}: raise --max-num-batched-tokens, or steer "
            "only generated tokens (positions='generated')"
        )


def _waiting_to_decide(request: Any) -> bool:
    """A request not yet scheduled at all whose steering needs its whole prompt (after a preemption its
    decision is already made and held, so it may be chunked like any other)."""
    params = request.sampling_params
    resolved = (params.extra_args or {}).get("steering_resolved") if params is not None else None
    return request.num_computed_tokens == 0 and not request.num_preemptions and needs_whole_prompt(resolved)


def patch_scheduler(scheduler_cls: Any, manager_cls: Any) -> None:
    """Count the tokens each step has scheduled so far (every scheduled request allocates its slots), and
    hold back a waiting request that would be chunked, with the waiting requests behind it."""
    if getattr(scheduler_cls.__dict__["_handle_blocked_waiting_request"], "_by_steerable", False):
        return
    original_step, original_allocate = manager_cls.new_step_starts, manager_cls.allocate_slots
    original_ready = scheduler_cls._handle_blocked_waiting_request

    @functools.wraps(original_step)
    def new_step_starts(self: Any) -> None:
        self.steerable_scheduled_tokens, self.steerable_holding = 0, False
        original_step(self)

    @functools.wraps(original_allocate)
    def allocate_slots(self: Any, request: Any, num_new_tokens: int, *args: Any, **kwargs: Any) -> Any:
        blocks = original_allocate(self, request, num_new_tokens, *args, **kwargs)
        if blocks is not None:  # an allocation that fails schedules nothing
            self.steerable_scheduled_tokens = getattr(self, "steerable_scheduled_tokens", 0) + num_new_tokens
        return blocks

    @functools.wraps(original_ready)
    def ready(self: Any, request: Any) -> bool:
        if not original_ready(self, request):
            return False
        manager = self.kv_cache_manager
        if getattr(manager, "steerable_holding", False):
            return False  # a request ahead of it is waiting for room: first come, first served
        if _waiting_to_decide(request):
            room = step_room(self.scheduler_config) - getattr(manager, "steerable_scheduled_tokens", 0)
            if request.num_tokens > room:
                manager.steerable_holding = True
                return False
        return True

    for function in (new_step_starts, allocate_slots, ready):
        function._by_steerable = True  # type: ignore[union-attr]
    manager_cls.new_step_starts = new_step_starts
    manager_cls.allocate_slots = allocate_slots
    scheduler_cls._handle_blocked_waiting_request = ready
