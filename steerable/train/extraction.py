"""Training steering vectors from contrastive pairs, reading activations from the steerable layers.

Positive and negative texts share batches; each layer keeps only the read positions; the forward
stops after the deepest requested layer; ``mean`` aggregates as it streams, so memory does not grow
with the dataset.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from steerable.chat_roles import ROLES, ChatMarkers, role_mask
from steerable.devices import input_device
from steerable.train.aggregators import AGGREGATORS, Aggregator
from steerable.train.batching import pad, pad_token_id, position_ids, takes_position_ids
from steerable.train.distributed import all_reduce_sum, gather_objects, raise_together, rank_and_world
from steerable.train.pairs import ContrastivePair, ReadIndex, as_pair
from steerable.train.read_store import ReadStore
from steerable.vectors import SteeringVector, model_name_of


class _StopForward(Exception):
    """Raised by the deepest recorded layer: nothing after it is needed."""


def train_steering_vector(
    model: Any,
    tokenizer: Any,
    pairs: Iterable[ContrastivePair | tuple[str, str]],
    layers: Iterable[int] | None = None,
    method: str | Aggregator = "mean",
    read_token_index: ReadIndex = -1,
    batch_size: int = 16,
    site: str = "block",
    show_progress: bool | None = None,
    description: str | None = None,
    move_to_cpu: bool = False,
    offload_dir: str | Path | None = None,
    normalize: bool = False,
    **foreign: Any,
) -> SteeringVector:
    """Train a steering vector on ``pairs`` at ``layers`` (default: all) of a steerable ``model``.

    ``method``: ``"mean"`` (CAA: mean of positive minus negative), ``"pca_diff"``, ``"pca_center"``,
    ``"logistic"`` (see ``steerable.train.aggregators``), or a callable ``(pos [n, d], neg [n, d]) -> [d]``.
    Scale: ``pca_diff``, ``pca_center`` and ``logistic`` directions are scaled to the mean difference's
    projection (multiplier 1 moves as far as ``mean`` does); ``normalize=True`` gives unit vectors, as
    steering-vectors, repeng and CAST return (port their multipliers with it).
    ``pairs``: ``ContrastivePair``s, ``(positive, negative)`` tuples, or other libraries' samples
    (steering-vectors' ``SteeringVectorTrainingSample``, repeng's ``DatasetEntry``, CAST's ``ContrastivePair``).
    Results do not depend on ``batch_size`` or the tokenizer's padding side. ``pairs`` may be any
    iterable (a generator over a file, a streaming dataset); it is read in chunks, never materialised.
    ``mean`` keeps O(layers x d) state; the other methods keep each pair's reads at the read positions
    only, on the CPU, or in memory-mapped files in ``offload_dir``. ``move_to_cpu``: keep ``mean``'s
    running sums on the CPU. Under torch.distributed (``torchrun``, accelerate) each rank reads its
    share and every rank returns the same vector (see ``steerable.train.distributed``).
    """
    import shutil
    import tempfile

    from steerable.foreign_spellings import SEED, refuse

    refuse("train_steering_vector", foreign, SEED)
    aggregate = _aggregator(method)
    streaming = method == "mean"
    scratch = Path(tempfile.mkdtemp(prefix="steerable-reads-", dir=offload_dir)) if offload_dir is not None else None
    try:
        how = _Reading(layers, read_token_index, batch_size, site, show_progress, streaming, move_to_cpu, scratch)
        resolved, n_pairs, collected = _collect(model, tokenizer, pairs, how)
        vectors = _vectors(resolved, n_pairs, collected, streaming, aggregate, method)
        if normalize:
            vectors = {layer: torch.nn.functional.normalize(v, dim=0) for layer, v in vectors.items()}
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    config = getattr(model, "config", None)
    return SteeringVector(
        vectors,
        site=site,
        model_type=getattr(config, "model_type", None),
        model_name=model_name_of(config),
        method=method if isinstance(method, str) else getattr(method, "__name__", "custom"),
        description=description,
        num_layers=len(model.steerable_layers),
    )


def _vectors(
    resolved: list[tuple[int, int]],
    n_pairs: int,
    collected: dict[int, Any],
    streaming: bool,
    aggregate: Aggregator,
    method: Any,
) -> dict[int, Tensor]:
    vectors: dict[int, Tensor] = {}
    for layer, _ in resolved:
        if streaming:
            vectors[layer] = ((collected[layer][0] - collected[layer][1]) / n_pairs).float().cpu()
        else:
            pos, neg = collected[layer]
            vectors[layer] = _checked(aggregate(pos, neg), layer, method, pos.shape[-1]).float().clone()
    return vectors


def extract_activations(
    model: Any,
    tokenizer: Any,
    pairs: Iterable[ContrastivePair | tuple[str, str]],
    layers: Iterable[int] | None = None,
    read_token_index: ReadIndex = -1,
    batch_size: int = 16,
    site: str = "block",
    show_progress: bool | None = None,
    move_to_cpu: bool = True,
    offload_dir: str | Path | None = None,
    **foreign: Any,
) -> tuple[dict[int, Float[Tensor, "n_pairs d_model"]], dict[int, Float[Tensor, "n_pairs d_model"]]]:
    """Per-pair activations at the read positions, without aggregating: ``(positive, negative)``, each
    ``{layer: tensor[n_pairs, d_model]}`` (the steering-vectors library's first step). Keeps every
    read (at the read positions only); with ``offload_dir`` the tensors are memory-mapped files there
    (they stay after the call). ``train_steering_vector(method="mean")`` streams instead."""
    from steerable.foreign_spellings import SEED, refuse

    refuse("extract_activations", foreign, SEED)
    how = _Reading(layers, read_token_index, batch_size, site, show_progress, False, move_to_cpu, offload_dir)
    resolved, _, collected = _collect(model, tokenizer, pairs, how)
    return {layer: collected[layer][0] for layer, _ in resolved}, {layer: collected[layer][1] for layer, _ in resolved}


def aggregate_activations(
    positive: dict[int, Float[Tensor, "n d_model"]],
    negative: dict[int, Float[Tensor, "n d_model"]],
    method: str | Aggregator = "mean",
) -> dict[int, Float[Tensor, " d_model"]]:
    """One direction per layer from per-pair activations (the steering-vectors library's second step);
    wrap the result in ``SteeringVector(...)`` to steer with it."""
    aggregate = _aggregator(method)
    if positive.keys() != negative.keys():
        raise ValueError(
            f"positive and negative activations cover different layers: {list(positive)} vs {list(negative)}"
        )
    out: dict[int, Tensor] = {}
    for layer in positive:
        pos, neg = positive[layer], negative[layer]
        if pos.ndim != 2 or pos.shape != neg.shape:
            raise ValueError(
                f"layer {layer}: expected positive and negative activations of the same shape [n, d], got "
                f"{list(pos.shape)} and {list(neg.shape)}"
            )
        out[layer] = _checked(aggregate(pos.float(), neg.float()), layer, method, pos.shape[-1]).float()
    return out


def _checked(direction: Any, layer: int, method: Any, width: int) -> Tensor:
    """An aggregator's result, checked: one finite direction of the activations' width."""
    name = method if isinstance(method, str) else getattr(method, "__name__", "the aggregator")
    if not isinstance(direction, Tensor) or direction.ndim != 1 or direction.shape[0] != width:
        got = list(direction.shape) if isinstance(direction, Tensor) else type(direction).__name__
        raise ValueError(f"layer {layer}: {name} returned {got}; an aggregator must return a tensor [{width}]")
    if not bool(torch.isfinite(direction).all()):
        raise ValueError(f"layer {layer}: {name} returned non-finite values (nan or inf)")
    return direction


#: Pairs read from an iterable at a time (tokenised, sorted by length, batched); memory for ``mean``
#: does not grow with the dataset, only with this.
CHUNK_PAIRS = 512


@dataclass(frozen=True)
class _Reading:
    """How to read the pairs: where (``layers``, ``site``, ``read_token_index``), in what batches, and
    whether to keep running sums (``streaming``) or every read (on the CPU, or in ``offload_dir``)."""

    layers: Iterable[int] | None
    read_token_index: ReadIndex
    batch_size: int
    site: str
    show_progress: bool | None
    streaming: bool
    move_to_cpu: bool
    offload_dir: str | Path | None = None


def _collect(
    model: Any, tokenizer: Any, pairs: Iterable[ContrastivePair | tuple[str, str]], how: _Reading
) -> tuple[list[tuple[int, int]], int, dict[int, Any]]:
    """Run the pairs through the model and collect, per layer, ``[2, d]`` running sums (``streaming``)
    or (positive ``[n_pairs, d]``, negative ``[n_pairs, d]``) reads, in the pairs' order.

    ``pairs`` may be any iterable (a generator over a file, a streaming dataset): it is read in chunks
    of ``CHUNK_PAIRS``. Under torch.distributed each rank runs its share (see ``steerable.train.distributed``)
    and every rank returns the combined result."""
    model, site, resolved = _where(model, how)
    _, world = rank_and_world()
    sums: dict[int, Tensor] = {}
    store = None if how.streaming else ReadStore([layer for layer, _ in resolved], how.offload_dir)
    reader = _PairReader(
        model, tokenizer, resolved, how.read_token_index, how.batch_size, how.move_to_cpu or not how.streaming
    )
    seen = _read_pairs(model, site, resolved, reader, pairs, how, sums, store)
    if how.streaming:
        if world > 1:  # a rank may have had no pair: it learns the width from the others
            widths = gather_objects({layer: int(t.shape[-1]) for layer, t in sums.items()})
            for layer, _ in resolved:
                width = next(w[layer] for w in widths if layer in w)
                local = sums.get(layer, torch.zeros(2, width, dtype=torch.float64))
                sums[layer] = all_reduce_sum(local.cpu()).to(local.device)
        return resolved, seen, sums
    assert store is not None
    return resolved, seen, _combined(store, resolved, world)


def _where(model: Any, how: _Reading) -> tuple[Any, str, list[tuple[int, int]]]:
    """The model, the checked site and the resolved ``(layer, index)`` pairs; errors first."""
    from steerable import _runtime
    from steerable.model import SteerableModel

    if not isinstance(model, SteerableModel):
        raise TypeError("train_steering_vector needs a steerable model: use SteerableModel.wrap(model) first")
    site = _runtime.check_site(model, how.site)
    batch_size = how.batch_size
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    layer_list = list(how.layers) if how.layers is not None else list(range(_runtime.layer_count(model)))
    if not layer_list:
        raise ValueError("layers is empty: give at least one layer index")
    return model, site, _runtime.layer_indices(model, layer_list)


def _read_pairs(
    model: Any,
    site: str,
    resolved: list[tuple[int, int]],
    reader: _PairReader,
    pairs: Iterable[Any],
    how: _Reading,
    sums: dict[int, Tensor],
    store: ReadStore | None,
) -> int:
    """Read this rank's share of ``pairs``, chunk by chunk, into ``sums`` (streaming) or ``store``;
    returns how many pairs there were (all ranks'). An error reaches every rank."""
    from steerable import _runtime

    rank, world = rank_and_world()
    total = len(pairs) if isinstance(pairs, Sized) else None
    progress_on = how.show_progress if how.show_progress is not None else (total is None or total >= 4 * how.batch_size)
    progress = tqdm(total=total, unit="pair", desc="Training steering vector", disable=rank != 0 or not progress_on)
    seen = 0
    error: BaseException | None = None
    try:
        with _runtime.taps(model, resolved, site, reader.make_tap), torch.inference_mode():
            for chunk in _chunks(pairs, CHUNK_PAIRS):
                numbers = range(seen, seen + len(chunk))
                seen += len(chunk)
                mine = [(i, pair) for i, pair in zip(numbers, chunk, strict=True) if i % world == rank]
                if mine:
                    if store is None:  # only running sums: memory does not grow with the data
                        reader.run([i for i, _ in mine], [pair for _, pair in mine], sums)
                    else:
                        reads = reader.run([i for i, _ in mine], [pair for _, pair in mine])
                        store.append(torch.tensor([i for i, _ in mine]), reads)
                progress.update(len(chunk))
        if seen == 0:
            raise ValueError("pairs is empty: give at least one (positive, negative) pair")
    except BaseException as caught:  # every rank must learn of it before the collectives that follow
        error = caught
    finally:
        progress.close()
    raise_together(error)
    return seen


def _combined(store: ReadStore, resolved: list[tuple[int, int]], world: int) -> dict[int, Any]:
    """Each layer's (positive, negative) reads over all ranks, in the pairs' order."""
    out: dict[int, Any] = {}
    if world == 1:  # this process read every pair, in order
        return {layer: store.reads(layer) for layer, _ in resolved}
    shares = gather_objects((store.pair_indices(), {layer: store.reads(layer) for layer, _ in resolved}))
    shares = [(indices, reads) for indices, reads in shares if indices.numel()]  # ranks with no pair
    order = torch.cat([indices for indices, _ in shares]).argsort()
    for layer, _ in resolved:
        positive = torch.cat([reads[layer][0] for _, reads in shares])[order]
        negative = torch.cat([reads[layer][1] for _, reads in shares])[order]
        out[layer] = (positive, negative)
    return out


def _chunks(pairs: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for pair in pairs:
        chunk.append(pair)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _PairReader:
    """Runs pairs through the model (positives and negatives in shared batches, a shared prompt run
    once and continued from its KV cache) and returns each layer's reads at the read positions."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        resolved: list[tuple[int, int]],
        read_token_index: ReadIndex,
        batch_size: int,
        to_cpu: bool,
    ) -> None:
        self.net, self.tokenizer, self.resolved = model, tokenizer, resolved
        self.read_token_index, self.batch_size, self.to_cpu = read_token_index, batch_size, to_cpu
        self.deepest = max(index for _, index in resolved)
        params = inspect.signature(model.forward).parameters
        self.cache_arg = next((name for name in ("cache", "past_key_values") if name in params), None)
        self.with_positions = takes_position_ids(model)
        self.pad_id = pad_token_id(tokenizer)
        self.device = input_device(model)
        self.gathered: dict[int, Tensor] = {}
        self.columns: dict[str, Tensor | None] = {"index": None, "weight": None}
        self.markers: ChatMarkers | None = None

    def make_tap(self, layer: int, index: int) -> Callable[[Tensor, Any], None]:
        def tap(hidden: Tensor, _step: Any) -> None:
            if self.columns["index"] is not None:  # None while a shared prefix runs: nothing to read there
                assert self.columns["weight"] is not None
                columns, weight = self.columns["index"], self.columns["weight"]
                # on this layer's device (under a device map, layers live on different devices)
                self.gathered[layer] = _read(hidden, columns.to(hidden.device), weight.to(hidden.device))
            if index == self.deepest:
                raise _StopForward

        return tap

    def _forward(self, ids: Tensor, mask: Tensor, read_rows: list[list[int]] | None, cache: Any = None) -> None:
        """One forward over ``ids`` (the last columns of ``mask``), stopped after the deepest layer."""
        index, weight = _columns(read_rows) if read_rows is not None else (None, None)
        self.columns["index"] = index.to(self.device) if index is not None else None
        self.columns["weight"] = weight.to(self.device) if weight is not None else None
        inputs: dict[str, Any] = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        if self.with_positions:  # absolute-position models (GPT-2) need them under padding
            inputs["position_ids"] = position_ids(mask)[:, -ids.shape[1] :].to(self.device)
        if cache is not None:
            inputs[str(self.cache_arg)] = cache
        try:
            self.net(**inputs, use_cache=cache is not None)
        except _StopForward:
            pass

    def run(
        self, numbers: list[int], pairs: list[Any], sums: dict[int, Tensor] | None = None
    ) -> dict[int, Float[Tensor, "2 k d_model"]]:
        """Each layer's reads of ``pairs`` (numbered ``numbers`` in the whole dataset, for errors); with
        ``sums``, add each batch's positive and negative sums (float64 ``[2, d]``) there instead, so
        nothing of the size of the chunk is kept."""
        texts, reads = _texts_and_reads(pairs, self.read_token_index, numbers)
        if self.markers is None and any(isinstance(r, str) for r in reads):
            self.markers = ChatMarkers.from_tokenizer(self.tokenizer)
        token_ids: list[list[int]] = [list(ids) for ids in self.tokenizer(texts)["input_ids"]]
        chosen = [_resolve_read(t, r, ids, self.markers) for t, r, ids in zip(texts, reads, token_ids, strict=True)]
        n_pairs = len(pairs)
        # A pair's texts usually share a prefix (the prompt) before every read position: run it once and
        # continue both texts from its KV cache. Other pairs run as plain batches of texts.
        shared = [
            min(_common_prefix(token_ids[2 * k], token_ids[2 * k + 1]), min(chosen[2 * k]), min(chosen[2 * k + 1]))
            if self.cache_arg is not None
            else 0
            for k in range(n_pairs)
        ]
        by_length = sorted(range(n_pairs), key=lambda k: len(token_ids[2 * k]) + len(token_ids[2 * k + 1]))
        shared_pairs = [k for k in by_length if shared[k] > 0]
        plain_texts = sorted(
            (i for k in by_length if shared[k] == 0 for i in (2 * k, 2 * k + 1)), key=lambda i: len(token_ids[i])
        )
        per_batch = max(1, self.batch_size // 2)
        jobs: list[tuple[str, list[int]]] = [
            ("shared", shared_pairs[s : s + per_batch]) for s in range(0, len(shared_pairs), per_batch)
        ] + [("plain", plain_texts[s : s + self.batch_size]) for s in range(0, len(plain_texts), self.batch_size)]
        out: dict[int, Tensor] = {}
        for kind, job in jobs:
            if kind == "plain":
                rows = job
                batch = pad([token_ids[i] for i in rows], self.pad_id, "left")
                self._forward(
                    batch.input_ids,
                    batch.attention_mask,
                    [[offset + c for c in chosen[i]] for i, offset in zip(rows, batch.offsets(), strict=True)],
                )
            else:
                from transformers import DynamicCache

                rows = [i for k in job for i in (2 * k, 2 * k + 1)]
                prefix = pad([token_ids[2 * k][: shared[k]] for k in job], self.pad_id, "left")
                cache = DynamicCache(config=self.net.config)
                self._forward(prefix.input_ids, prefix.attention_mask, None, cache)
                cache.batch_repeat_interleave(2)  # each prefix continues as its positive and its negative
                suffix = pad([token_ids[i][shared[i // 2] :] for i in rows], self.pad_id, "right")
                mask = torch.cat([prefix.attention_mask.repeat_interleave(2, dim=0), suffix.attention_mask], dim=1)
                self._forward(suffix.input_ids, mask, [[c - shared[i // 2] for c in chosen[i]] for i in rows], cache)
            self._keep(rows, n_pairs, sums, out)
        return out

    def _keep(self, rows: list[int], n_pairs: int, sums: dict[int, Tensor] | None, out: dict[int, Tensor]) -> None:
        """Move the last forward's reads (texts ``rows``: ``2k`` positive, ``2k + 1`` negative of pair ``k``)
        into ``sums`` (added) or ``out`` (at their pairs)."""
        kinds = torch.tensor([i % 2 for i in rows])  # 0: positive, 1: negative
        pair_ids = torch.tensor([i // 2 for i in rows])
        for layer, _ in self.resolved:
            read = self.gathered.pop(layer).float()
            read = read.cpu() if self.to_cpu else read
            if sums is not None:
                here = kinds.to(read.device)
                part = torch.stack([read[here == k].double().sum(0) for k in (0, 1)])
                sums[layer] = sums[layer] + part if layer in sums else part
                continue
            if layer not in out:
                out[layer] = torch.zeros(2, n_pairs, read.shape[-1], device=read.device)
            out[layer][kinds.to(read.device), pair_ids.to(read.device)] = read


def _texts_and_reads(
    pairs: Sequence[ContrastivePair | tuple[str, str]], default: ReadIndex, numbers: Sequence[int]
) -> tuple[list[str], list[int | slice | str]]:
    """Interleave positives and negatives (so a batch holds both) and resolve each text's read index;
    ``numbers``: each pair's number in the dataset, for errors."""
    texts: list[str] = []
    reads: list[int | slice | str] = []
    for number, pair in zip(numbers, pairs, strict=True):
        pair = as_pair(pair) or pair  # other libraries' samples (steering-vectors, repeng, CAST) too
        if isinstance(pair, ContrastivePair):
            items = [(pair.positive, pair.read_positive_token_index), (pair.negative, pair.read_negative_token_index)]
        elif isinstance(pair, (tuple, list)) and len(pair) == 2:
            items = [(pair[0], None), (pair[1], None)]
        else:
            raise TypeError(f"pair {number} must be a ContrastivePair or a (positive, negative) tuple, got {pair!r}")
        for text, own in items:
            if not isinstance(text, str) or not text:
                raise ValueError(f"pair {number} has an empty or non-string text: {text!r}")
            chosen = own if own is not None else (default(text) if callable(default) else default)
            if isinstance(chosen, str) and chosen not in ROLES:
                raise ValueError(f"pair {number}: unknown read role {chosen!r}; use one of {', '.join(ROLES)}")
            if isinstance(chosen, bool) or not isinstance(chosen, (int, slice, str)):
                raise TypeError(f"pair {number}: a read index must be an int, a slice or a role, got {chosen!r}")
            texts.append(text)
            reads.append(chosen)
    return texts, reads


def _resolve_read(text: str, read: int | slice | str, ids: list[int], markers: ChatMarkers | None) -> list[int]:
    """The token indices (in the unpadded text) that ``read`` selects; an error if none or outside."""
    length = len(ids)
    if isinstance(read, str):
        assert markers is not None
        tensors = markers.tensors(read)  # type: ignore[arg-type]
        inside = role_mask(torch.tensor([ids]), tensors["header"], tensors["end"], read)[0]  # type: ignore[arg-type]
        if not bool(inside.any()):
            raise ValueError(f"the read role {read!r} selects no token of {text!r}: is it chat-formatted?")
        return [int(i) for i in inside.nonzero()[:, 0]]
    if isinstance(read, slice):
        chosen = list(range(length))[read]
        if not chosen:
            raise ValueError(f"the read span {read} selects no token of {text!r} ({length} tokens)")
        return chosen
    if not -length <= read < length:
        raise ValueError(f"read index {read} is outside {text!r}, which has {length} tokens")
    return [read % length]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _columns(rows: list[list[int]]) -> tuple[Tensor, Float[Tensor, "batch span"]]:
    """Column indices to read for each row, with averaging weights (a span is averaged)."""
    span = max(len(r) for r in rows)
    index = torch.tensor([r + [r[-1]] * (span - len(r)) for r in rows])
    weight = torch.tensor([[1.0 / len(r)] * len(r) + [0.0] * (span - len(r)) for r in rows])
    return index, weight


def _read(
    hidden: Float[Tensor, "batch seq d_model"], index: Tensor, weight: Float[Tensor, "batch span"]
) -> Float[Tensor, "batch d_model"]:
    picked = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))
    if index.shape[1] == 1:
        return picked[:, 0]
    return (picked.float() * weight[..., None]).sum(1).to(hidden.dtype)


def _aggregator(method: str | Aggregator) -> Aggregator:
    if callable(method):
        return method
    if method not in AGGREGATORS:
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(AGGREGATORS)} or a callable")
    return AGGREGATORS[method]
