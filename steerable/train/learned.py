"""Learned steering vectors: optimise a vector by gradient while the model stays frozen.

Objectives:

- ``"likelihood"``: make target completions more likely given their prompts when the vector is added
  (mean negative log-likelihood of the completion tokens; an empty prompt is the "promptless" case).
- ``"bipo"``: bi-directional preference optimisation (arXiv 2406.00045). With ``+v`` the log-ratio
  ``log p(chosen) - log p(rejected)``, measured relative to the unsteered model, goes up; with ``-v``
  it goes down. The paper samples the direction ``d`` in {+1, -1} per step; here both are averaged,
  which is the same expectation, computed exactly (and deterministic)::

      r(d) = beta * ([log p_dv(chosen) - log p_0(chosen)] - [log p_dv(rejected) - log p_0(rejected)])
      loss = -(log sigmoid(r(+1)) + log sigmoid(-r(-1))) / 2

- any callable ``loss(model, items) -> Tensor``, run while the vector steers the model.

Losses cover completion tokens only; prompts and padding never count, on either padding side.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from tqdm.auto import tqdm

from steerable import _runtime
from steerable.devices import input_device
from steerable.train.batching import Side, pad, pad_token_id
from steerable.train.distributed import all_reduce_sum, rank_and_world
from steerable.vectors import SteeringVector, model_name_of


@dataclass(frozen=True)
class Completion:
    """A prompt and the completion to make more likely (``prompt`` may be empty)."""

    prompt: str
    completion: str


@dataclass(frozen=True)
class Preference:
    """A prompt, the completion to prefer and the one to avoid."""

    prompt: str
    chosen: str
    rejected: str


Objective = str | Callable[[Any, list[Any]], Tensor]


@dataclass
class Batch:
    """Prompt + completion token rows, padded, with a mask of the completion tokens to score."""

    input_ids: Int[Tensor, "batch seq"]
    attention_mask: Int[Tensor, "batch seq"]
    position_ids: Int[Tensor, "batch seq"]
    scored: Bool[Tensor, "batch seq"]  # token t is scored (predicted from t-1)


def encode(tokenizer: Any, prompts: Sequence[str], completions: Sequence[str], device: torch.device) -> Batch:
    """Tokenise prompt and completion apart (so the boundary is exact) and pad on the tokenizer's side."""
    rows: list[tuple[list[int], int]] = []
    for prompt, completion in zip(prompts, completions, strict=True):
        prompt_ids = list(tokenizer(prompt)["input_ids"]) if prompt else []
        if not prompt_ids and getattr(tokenizer, "bos_token_id", None) is not None:
            prompt_ids = [tokenizer.bos_token_id]  # promptless: the first completion token needs a context
        completion_ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
        if not completion_ids:
            raise ValueError(f"the completion {completion!r} has no tokens")
        rows.append((prompt_ids + completion_ids, len(prompt_ids)))
    side: Side = "left" if getattr(tokenizer, "padding_side", "right") == "left" else "right"
    padded = pad([tokens for tokens, _ in rows], pad_token_id(tokenizer), side)
    scored = torch.zeros_like(padded.input_ids, dtype=torch.bool)
    for row, ((tokens, prompt_length), start) in enumerate(zip(rows, padded.offsets(), strict=True)):
        scored[row, start + max(prompt_length, 1) : start + len(tokens)] = True
    padded = padded.to(device)  # position_ids: absolute-position models need them under padding
    return Batch(padded.input_ids, padded.attention_mask, padded.position_ids, scored.to(device))


def sequence_logprobs(model: Any, batch: Batch) -> Float[Tensor, " batch"]:
    """Sum of log p(token | everything before it) over each row's scored (completion) tokens."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
    logits = logits.logits if hasattr(logits, "logits") else logits[0]
    logprobs = logits[:, :-1].float().log_softmax(-1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    return (logprobs * batch.scored[:, 1:]).sum(-1)


def bipo_loss(
    steered_chosen: Tensor,
    steered_rejected: Tensor,
    anti_chosen: Tensor,
    anti_rejected: Tensor,
    reference_chosen: Tensor,
    reference_rejected: Tensor,
    beta: float,
) -> Tensor:
    """BiPO's loss from sequence log-probabilities with ``+v`` (steered), ``-v`` (anti) and none."""
    plus = beta * ((steered_chosen - reference_chosen) - (steered_rejected - reference_rejected))
    minus = beta * ((anti_chosen - reference_chosen) - (anti_rejected - reference_rejected))
    return -(F.logsigmoid(plus) + F.logsigmoid(-minus)).mean() / 2


def optimize_steering_vector(
    model: Any,
    tokenizer: Any,
    data: Iterable[Any],
    layers: Iterable[int],
    objective: Objective = "likelihood",
    *,
    site: str = "block",
    multiplier: float = 1.0,
    lr: float = 1e-2,
    epochs: int = 1,
    steps: int | None = None,
    batch_size: int = 8,
    accumulate: int = 1,
    init: SteeringVector | None = None,
    max_norm: float | None = None,
    beta: float = 0.1,
    seed: int = 0,
    patience: int | None = None,
    show_progress: bool | None = None,
    description: str | None = None,
) -> SteeringVector:
    """Learn a steering vector at ``layers`` by gradient; the model's weights do not change.

    ``data``: :class:`Completion` items (or ``(prompt, completion)`` tuples) for ``"likelihood"``,
    :class:`Preference` items (or ``(prompt, chosen, rejected)``) for ``"bipo"``, anything your
    callable takes otherwise. ``epochs`` passes over the data (or exactly ``steps`` optimizer steps),
    Adam at ``lr``, ``batch_size`` items per forward, ``accumulate`` forwards per step. ``init``: a
    vector to start from (default zeros); ``max_norm``: each layer's vector is projected back inside
    this norm after every step. ``patience``: stop when the epoch's mean loss has not improved for this
    many epochs. Deterministic for a given ``seed``: the model runs in eval mode (no dropout) while the
    vector learns, and each module's mode is restored after; gradients are on even when called under
    ``torch.no_grad()`` or ``torch.inference_mode()``. A non-finite loss stops at once, naming the step;
    a loss that does not depend on the vector is an error. Under torch.distributed (``torchrun``,
    accelerate) every batch is split across the ranks and the gradients summed, normalised by the
    whole batch (tokens for ``likelihood``, items otherwise): every rank ends with the single-process
    vector. A callable objective is taken as a mean over its items.
    """
    items, layer_list = _checked_inputs(model, data, layers)
    loss_of = _objective(objective, tokenizer, _positive("beta", beta))
    _check_counts(batch_size=batch_size, accumulate=accumulate, epochs=epochs, steps=steps, patience=patience)
    rate, run_multiplier = _positive("lr", lr), _multiplier(multiplier)
    max_norm = _positive("max_norm", max_norm) if max_norm is not None else None
    with _optimising(model):
        parameters = _start(model, layer_list, init)
        optimizer = torch.optim.Adam(list(parameters.values()), lr=rate)
        total = steps if steps is not None else epochs * math.ceil(math.ceil(len(items) / batch_size) / accumulate)
        run = _Run(model, parameters, optimizer, loss_of, run_multiplier, max_norm, total)
        _train(run, items, SteeringVector(parameters, site=site), batch_size, accumulate, seed, patience, show_progress)
    name = objective if isinstance(objective, str) else getattr(objective, "__name__", "custom")
    return _learned(
        model,
        parameters,
        site,
        name,
        description
        or f"optimize_steering_vector objective={name} lr={lr!s} steps={run.done} batch_size={batch_size} beta={beta}",
    )


def _learned(model: Any, parameters: dict[int, nn.Parameter], site: str, name: str, description: str) -> SteeringVector:
    """The learned vector on the CPU, with where it came from."""
    config = getattr(model, "config", None)
    return SteeringVector(
        {layer: p.detach().cpu().clone() for layer, p in parameters.items()},
        site=site,
        model_type=getattr(config, "model_type", None),
        model_name=model_name_of(config),
        method=f"learned:{name}",
        description=description,
        num_layers=len(model.steerable_layers),
    )


def _checked_inputs(model: Any, data: Iterable[Any], layers: Iterable[int]) -> tuple[list[Any], list[int]]:
    """The items and the layers, as lists, checked non-empty; the model checked steerable."""
    from steerable.model import SteerableModel

    if not isinstance(model, SteerableModel):
        raise TypeError("optimize_steering_vector needs a steerable model: use SteerableModel.wrap(model) first")
    items, layer_list = list(data), list(layers)
    if not items:
        raise ValueError("data is empty: give at least one example")
    if not layer_list:
        raise ValueError("layers is empty: give at least one layer index")
    return items, layer_list


def _check_counts(**counts: int | None) -> None:
    """Counts that must be ints >= 1 (``steps`` and ``patience`` may be None: not given)."""
    for name, value in counts.items():
        if value is None and name in ("steps", "patience"):
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _positive(name: str, value: Any) -> float:
    """``value`` as a float, checked finite and > 0 (numpy scalars welcome)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not (math.isfinite(value) and float(value) > 0)
    ):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _multiplier(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value == 0:
        raise ValueError(
            f"multiplier must be a finite non-zero number, got {value!r}: the vector learns while it is added "
            "times the multiplier (at 0 it has no effect and learns nothing)"
        )
    return float(value)


@contextmanager
def _optimising(model: Any) -> Iterator[None]:
    """Eval mode (no dropout: deterministic, and BiPO's reference and steered forwards see one model),
    frozen weights and gradients on (even under no_grad or inference_mode); each module's mode and each
    weight's ``requires_grad`` are restored after."""
    modes = [(module, module.training) for module in model.modules()]
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in frozen:
            p.requires_grad_(False)  # the model is frozen: only the vector learns
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for module, training in modes:
            if module.training != training:
                module.train(training)
        for p, flag in frozen:
            p.requires_grad_(flag)


def _start(model: Any, layers: list[int], init: SteeringVector | None) -> dict[int, nn.Parameter]:
    """The vector's parameters: ``init``'s layers (zeros elsewhere), where the model's inputs live."""
    hidden = init.hidden_size if init is not None else _runtime.hidden_size(model)
    if hidden is None:
        raise ValueError("the model's hidden size is unknown: pass init=SteeringVector(...) to start from")
    device = input_device(model)
    parameters: dict[int, nn.Parameter] = {}
    for layer in layers:
        start = init[layer].detach().float().clone() if init is not None and layer in init else torch.zeros(hidden)
        parameters[layer] = nn.Parameter(start.to(device))
    return parameters


@dataclass
class _Run:
    """One optimisation: the model, the vector's parameters, the optimizer and the loss, and progress."""

    model: Any
    parameters: dict[int, nn.Parameter]
    optimizer: torch.optim.Optimizer
    loss_of: LossOf
    multiplier: float
    max_norm: float | None
    total: int
    done: int = 0


def _train(
    run: _Run,
    items: list[Any],
    vector: SteeringVector,
    batch_size: int,
    accumulate: int,
    seed: int,
    patience: int | None,
    show_progress: bool | None,
) -> None:
    """Epochs of steps until ``run.total`` steps are done or the loss has not improved for ``patience``."""
    generator = torch.Generator().manual_seed(seed)
    best, stale = math.inf, 0
    rank, _ = rank_and_world()
    shown = show_progress if show_progress is not None else run.total >= 20
    progress = tqdm(total=run.total, desc="Optimising steering vector", disable=rank != 0 or not shown)
    try:
        with run.model.steer(vector, run.multiplier) as handle:
            while run.done < run.total:
                order = torch.randperm(len(items), generator=generator).tolist()
                batches = [[items[i] for i in order[k : k + batch_size]] for k in range(0, len(order), batch_size)]
                epoch_losses: list[float] = []
                for first in range(0, len(batches), accumulate):
                    epoch_losses += _step(run, handle, batches[first : first + accumulate])
                    progress.update(1)
                    progress.set_postfix(loss=f"{epoch_losses[-1]:.4f}")
                    if run.done >= run.total:
                        break
                mean = sum(epoch_losses) / len(epoch_losses)
                best, stale = (mean, 0) if mean < best - 1e-6 else (best, stale + 1)
                if patience is not None and stale >= patience:
                    break
    finally:
        progress.close()


def _step(run: _Run, handle: Any, group: list[list[Any]]) -> list[float]:
    """One optimizer step over ``group`` (``accumulate`` batches); returns each batch's loss."""
    rank, world = rank_and_world()
    device = input_device(run.model)
    run.optimizer.zero_grad()
    losses = []
    for batch in group:
        share = batch[rank::world]  # under torch.distributed each rank takes its share
        summed, count = run.loss_of(run.model, handle, run.multiplier, share, device) if share else (None, 0.0)
        # normalised by the whole batch's count (all ranks'), so the summed gradients and the loss are
        # the single-process ones
        counts = all_reduce_sum(torch.tensor([float(count)])) if world > 1 else torch.tensor([count])
        batch_loss = float(summed.detach()) if summed is not None else 0.0
        batch_loss = float(all_reduce_sum(torch.tensor([batch_loss]))[0]) if world > 1 else batch_loss
        loss = batch_loss / float(counts[0])
        if not math.isfinite(loss):  # every rank sees the same (summed) loss: all stop together
            raise ValueError(
                f"the loss is {loss} at step {run.done + 1} of {run.total}: lower lr, set max_norm, or check the "
                "objective and the data (the vector is not returned)"
            )
        if summed is not None:
            (summed / float(counts[0]) / len(group)).backward()
        losses.append(loss)
    if world > 1:
        for p in run.parameters.values():
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            p.grad = all_reduce_sum(grad)
    if run.done == 0:
        _check_connected(run.parameters)
    run.optimizer.step()
    if run.max_norm is not None:
        with torch.no_grad():
            for p in run.parameters.values():
                p.mul_(torch.clamp(run.max_norm / p.norm().clamp_min(1e-12), max=1.0))
    run.done += 1
    return losses


def _check_connected(parameters: dict[int, nn.Parameter]) -> None:
    """After the first backward (gradients summed over ranks): every layer's vector got a gradient that
    is not all zeros, or the loss does not depend on it and it would come back unchanged."""
    unmoved = [layer for layer, p in parameters.items() if p.grad is None or not bool(p.grad.any())]
    if unmoved:
        raise ValueError(
            f"the loss does not depend on the steering vector at layers {unmoved} (its gradient there is "
            f"{'zero' if all(parameters[k].grad is not None for k in unmoved) else 'missing'}): a loss must be "
            "computed from the output of the steered model, after those layers; steer only layers the loss reads"
        )


#: (model, handle, multiplier, items, device) -> (summed loss, count it is a sum over): the loss is
#: total / count, and under torch.distributed total / (all ranks' count)
LossOf = Callable[[Any, Any, float, list[Any], torch.device], tuple[Tensor, float]]


def _objective(objective: Objective, tokenizer: Any, beta: float) -> LossOf:
    if objective == "likelihood":

        def likelihood(
            model: Any, handle: Any, multiplier: float, items: list[Any], device: torch.device
        ) -> tuple[Tensor, float]:
            examples = [_as(item, Completion) for item in items]
            batch = encode(tokenizer, [e.prompt for e in examples], [e.completion for e in examples], device)
            return -sequence_logprobs(model, batch).sum(), float(batch.scored[:, 1:].sum())  # per token

        return likelihood
    if objective == "bipo":

        def bipo(
            model: Any, handle: Any, multiplier: float, items: list[Any], device: torch.device
        ) -> tuple[Tensor, float]:
            examples = [_as(item, Preference) for item in items]
            prompts = [e.prompt for e in examples]
            chosen = encode(tokenizer, prompts, [e.chosen for e in examples], device)
            rejected = encode(tokenizer, prompts, [e.rejected for e in examples], device)
            handle.update(multiplier=0.0)
            with torch.no_grad():
                reference = sequence_logprobs(model, chosen), sequence_logprobs(model, rejected)
            handle.update(multiplier=multiplier)
            steered = sequence_logprobs(model, chosen), sequence_logprobs(model, rejected)
            handle.update(multiplier=-multiplier)
            anti = sequence_logprobs(model, chosen), sequence_logprobs(model, rejected)
            handle.update(multiplier=multiplier)
            return bipo_loss(*steered, *anti, *reference, beta) * len(items), float(len(items))  # per item

        return bipo
    if callable(objective):

        def custom(
            model: Any, handle: Any, multiplier: float, items: list[Any], device: torch.device
        ) -> tuple[Tensor, float]:
            loss = objective(model, items)
            if not isinstance(loss, Tensor) or loss.ndim != 0 or not loss.requires_grad:
                raise ValueError("a loss callable must return a 0-d tensor that depends on the steered model's output")
            return loss * len(items), float(len(items))  # taken as a mean over the items

        return custom
    raise ValueError(f"unknown objective {objective!r}: use 'likelihood', 'bipo' or a callable (model, items) -> loss")


def _as(item: Any, kind: type) -> Any:
    if isinstance(item, kind):
        return item
    fields = 2 if kind is Completion else 3
    if isinstance(item, (tuple, list)) and len(item) == fields and all(isinstance(x, str) for x in item):
        return kind(*item)
    shape = "(prompt, completion)" if kind is Completion else "(prompt, chosen, rejected)"
    raise TypeError(f"expected a {kind.__name__} or a {shape} tuple of strings, got {item!r}")
