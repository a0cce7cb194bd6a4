"""The peers researchers steer with today: nnsight and TransformerLens, next to steerable and plain
forward hooks. Each is timed against its own vanilla baseline in the same process, trials interleaved.

    python -m benchmarks.peers [--trials 5] [--new-tokens 16] [--prompt-len 512] [--quick]

- steerable, forward hooks, nnsight (0.8: an addition to each layer's output inside a trace, and in
  ``generate`` for every step) run on the same Hugging Face model; their vanilla is that model alone.
- TransformerLens (4.x: a hook on ``blocks.{i}.hook_resid_post``) runs its ``TransformerBridge`` over
  the same Hugging Face model, booted from a local copy of its config (no hub); its vanilla is the
  bridge without hooks, in the same process.

Every implementation steers all layers with one vector. Reported: decode ms/token at batch 1 and 8,
prefill ms/token at ``--prompt-len`` tokens, and the overhead-dominated regime (a 16-layer tiny model,
d=64, decode): extra microseconds per layer call over its vanilla. A peer that is not installed, or
cannot do something, says so in its cell. Writes benchmarks/results/peers.md and .json.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import Tensor

from benchmarks.hooks import hooks
from benchmarks.measure import decode_ms_per_token, prefill_ms_per_token, ratios, seconds, spread
from benchmarks.models import vanilla_model
from steerable import SteerableModel, SteeringVector
from steerable.testing.tiny_models import tiny_llama

MEASURES = ("decode_b1_ms_per_token", "decode_b8_ms_per_token", "prefill_ms_per_token", "layer_call_us")
IMPLEMENTATIONS = ("steerable", "forward hooks", "nnsight", "TransformerLens")
#: What each can do, built in (one argument), by hand (the user writes the tensor code), or not at all.
CAPABILITIES: dict[str, dict[str, str]] = {
    "steerable": {
        "per-row vectors in one batch": "built in",
        "token positions that survive the KV cache and left padding": "built in",
        "steer only generated tokens": "built in",
        "torch.compile without recompiles per steering": "built in",
    },
    "forward hooks": {
        "per-row vectors in one batch": "by hand",
        "token positions that survive the KV cache and left padding": "not supported",
        "steer only generated tokens": "not supported",
        "torch.compile without recompiles per steering": "not supported",
    },
    "nnsight": {
        "per-row vectors in one batch": "by hand",
        "token positions that survive the KV cache and left padding": "not supported",
        "steer only generated tokens": "by hand",
        "torch.compile without recompiles per steering": "not supported",
    },
    "TransformerLens": {
        "per-row vectors in one batch": "by hand",
        "token positions that survive the KV cache and left padding": "not supported",
        "steer only generated tokens": "not supported",
        "torch.compile without recompiles per steering": "not supported",
    },
}


@dataclass
class Steered:
    """A steered run: ``context`` applies the steering (not timed: it is set up once in real use, except
    for nnsight, whose trace is part of every call), ``run`` is timed inside it."""

    context: Callable[[], contextlib.AbstractContextManager[Any]]
    run: Callable[[], Any]


def timed(run: Callable[[], Any] | Steered) -> float:
    with run.context() if isinstance(run, Steered) else contextlib.nullcontext(), torch.inference_mode():
        return seconds(run.run if isinstance(run, Steered) else run)


def ids(batch: int, length: int) -> torch.Tensor:
    """Random token ids, the same for every implementation (seeded by the shape)."""
    return torch.randint(3, 200, (batch, length), generator=torch.Generator().manual_seed(batch + length))


# -- Hugging Face implementations: steerable, hooks, nnsight -------------------------------------------
def hf_runs(model: Any, vector: SteeringVector, new_tokens: int, prompt_len: int, name: str) -> dict[str, Any]:
    """For implementation ``name`` on ``model``: a (steered, vanilla) pair of callables per measure.
    steerable wraps ``model`` (unwrap it afterwards); the others use it as it is."""

    def ours(run: Callable[[], None]) -> Steered:
        return Steered(lambda: SteerableModel.of(model).steer(vector, 1.0), run)

    def hooked(run: Callable[[], None]) -> Steered:
        return Steered(lambda: hooks(model, vector, 1.0), run)

    vanilla = {
        "decode_b1_ms_per_token": lambda: decode_ms_per_token(model, 1, new_tokens, "cpu"),
        "decode_b8_ms_per_token": lambda: decode_ms_per_token(model, 8, new_tokens, "cpu"),
        "prefill_ms_per_token": lambda: prefill_ms_per_token(model, prompt_len, "cpu"),
    }
    if name == "steerable":
        SteerableModel.wrap(model)
        return {k: (ours(v), v) for k, v in vanilla.items()}
    if name == "forward hooks":
        return {k: (hooked(v), v) for k, v in vanilla.items()}
    return nnsight_runs(model, vector, new_tokens, prompt_len, vanilla)


def nnsight_runs(
    model: Any, vector: SteeringVector, new_tokens: int, prompt_len: int, vanilla: dict[str, Callable[[], Any]]
) -> dict[str, Any]:
    """nnsight 0.8 on ``model``: the same add inside a trace (prefill) and at every generation step."""
    try:
        import nnsight
    except ImportError:
        return {"error": "not installed"}
    from steerable.testing import smollm2_path

    n_layers = model.config.num_hidden_layers
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_path())  # for batching; inputs are ids
    wrapped = nnsight.TransformersModel(model, tokenizer=tokenizer, task="text-generation")
    layers = [wrapped.model.layers[i] for i in range(n_layers)]
    directions = [vector[i].to(model.dtype) for i in range(n_layers)]

    def nn_generate(batch: int) -> None:
        x = ids(batch, 8)
        with wrapped.generate(
            x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        ) as tracer:
            for _ in tracer.iter[0:new_tokens]:  # every generation step
                for layer, direction in zip(layers, directions, strict=True):
                    layer.output[:] += direction

    def nn_prefill() -> None:
        with wrapped.trace(ids(1, prompt_len)):
            for layer, direction in zip(layers, directions, strict=True):
                layer.output[:] += direction

    return {
        "decode_b1_ms_per_token": (
            Steered(contextlib.nullcontext, lambda: nn_generate(1)),
            vanilla["decode_b1_ms_per_token"],
        ),
        "decode_b8_ms_per_token": (
            Steered(contextlib.nullcontext, lambda: nn_generate(8)),
            vanilla["decode_b8_ms_per_token"],
        ),
        "prefill_ms_per_token": (Steered(contextlib.nullcontext, nn_prefill), vanilla["prefill_ms_per_token"]),
        "version": nnsight.__version__,
    }


# -- TransformerLens ------------------------------------------------------------------------------------
def lens_model(model: Any) -> Any:
    """TransformerLens 4's bridge over ``model`` (booted from a local copy of its config: no hub)."""
    import tempfile

    from transformer_lens.model_bridge import TransformerBridge

    from steerable.testing import smollm2_path

    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_path())
    folder = tempfile.mkdtemp(prefix="steerable-peers-")
    model.config.save_pretrained(folder)
    return TransformerBridge.boot_transformers(folder, hf_model=model, tokenizer=tokenizer)


def lens_runs(model: Any, vector: Tensor, new_tokens: int, prompt_len: int) -> dict[str, Any]:
    n_layers = model.cfg.n_layers
    direction = vector.to(model.cfg.dtype)

    def add(resid: Any, hook: Any) -> Any:
        return resid + direction

    names = [(f"blocks.{i}.hook_resid_post", add) for i in range(n_layers)]

    def generate(batch: int) -> None:
        model.generate(
            ids(batch, 8),
            max_new_tokens=new_tokens,
            do_sample=False,
            use_past_kv_cache=True,
            stop_at_eos=False,
            verbose=False,
        )

    def steered(run: Callable[[], None]) -> Steered:
        return Steered(lambda: model.hooks(fwd_hooks=names), run)

    vanilla = {
        "decode_b1_ms_per_token": lambda: generate(1),
        "decode_b8_ms_per_token": lambda: generate(8),
        "prefill_ms_per_token": lambda: model(ids(1, prompt_len)),
    }
    return {k: (steered(v), v) for k, v in vanilla.items()}


# -- measuring ----------------------------------------------------------------------------------------
def measure(runs: dict[str, Any], trials: int, per: dict[str, float]) -> dict[str, Any]:
    """Interleaved trials of (steered, vanilla) per measure; ms per token (``per``: tokens per run)."""
    out: dict[str, Any] = {}
    for key, pair in runs.items():
        if key not in MEASURES:
            continue
        steered, vanilla = pair
        timed(steered)
        timed(vanilla)  # warm-up
        s, v = [], []
        for _ in range(trials):
            s.append(timed(steered) * 1000 / per[key])
            v.append(timed(vanilla) * 1000 / per[key])
        out[key] = spread(s) | {"vanilla_median": statistics.median(v)} | ratios(s, v, of="medians")
    return out


def layer_call_us(runs: dict[str, Any], trials: int, new_tokens: int, n_layers: int) -> dict[str, Any]:
    """Extra microseconds per layer call in batch-1 decode on the tiny many-layer model."""
    steered, vanilla = runs["decode_b1_ms_per_token"]
    timed(steered)
    timed(vanilla)
    extra = []
    for _ in range(trials):
        extra.append((timed(steered) - timed(vanilla)) * 1e6 / (new_tokens * n_layers))
    return {"median": statistics.median(extra), "min": min(extra), "max": max(extra)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    model = vanilla_model("tiny" if args.quick else "smollm2")
    d, n_layers = model.config.hidden_size, model.config.num_hidden_layers
    vector = SteeringVector({i: torch.randn(d) * 0.1 for i in range(n_layers)})
    per = {
        "decode_b1_ms_per_token": args.new_tokens,
        "decode_b8_ms_per_token": args.new_tokens,
        "prefill_ms_per_token": args.prompt_len,
    }
    rows: dict[str, Any] = {}
    tiny = tiny_llama(16)  # the overhead-dominated regime
    tiny_vector = SteeringVector({i: torch.randn(64) * 0.1 for i in range(16)})
    for name in ("steerable", "forward hooks", "nnsight"):
        runs = hf_runs(model, vector, args.new_tokens, args.prompt_len, name)
        tiny_runs = hf_runs(tiny, tiny_vector, args.new_tokens, 8, name)
        if "error" in runs:
            rows[name] = {key: runs["error"] for key in MEASURES}
            continue
        rows[name] = measure(runs, args.trials, per)
        rows[name]["layer_call_us"] = layer_call_us(tiny_runs, args.trials, args.new_tokens, 16)
        if "version" in runs:
            rows[name]["version"] = runs["version"]
        SteerableModel.unwrap(model)  # the next implementation sees the plain model
        SteerableModel.unwrap(tiny)
    try:
        import transformer_lens  # noqa: F401

        rows["TransformerLens"] = measure(
            lens_runs(lens_model(model), torch.randn(d) * 0.1, args.new_tokens, args.prompt_len), args.trials, per
        )
        rows["TransformerLens"]["layer_call_us"] = layer_call_us(
            lens_runs(lens_model(tiny), torch.randn(64) * 0.1, args.new_tokens, 8), args.trials, args.new_tokens, 16
        )
        rows["TransformerLens"]["version"] = importlib.metadata.version("transformer-lens")
    except ImportError:
        rows["TransformerLens"] = {key: "not installed" for key in MEASURES}
    return {
        "model": "tiny" if args.quick else "SmolLM2-135M-Instruct",
        "trials": args.trials,
        "new_tokens": args.new_tokens,
        "prompt_len": args.prompt_len,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "rows": rows,
        "capabilities": CAPABILITIES,
    }


def cell(value: Any, key: str) -> str:
    if isinstance(value, str):
        return value
    if key == "layer_call_us":
        return f"{value['median']:+.1f} [{value['min']:+.1f}, {value['max']:+.1f}]"
    return f"{value['median']:.2f}, x{value['ratio']:.3f} [{value['ratio_min']:.3f}-{value['ratio_max']:.3f}]"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Peers: {report['model']} (fp32, CPU, {report['threads']} threads), {report['trials']} interleaved trials",
        "",
        f"torch {report['torch']}, transformers {report['transformers']}. Each cell: steered median, and the ratio to "
        "the implementation's own vanilla in the same process (median [min-max] over trials). All layers steered. "
        f"Decode: {report['new_tokens']} new tokens from 8-token prompts. Prefill: {report['prompt_len']} tokens. "
        "Layer call: extra microseconds per decoder-layer call over vanilla, batch-1 decode of a 16-layer tiny model.",
        "",
        "| implementation | decode b1 ms/token | decode b8 ms/token | prefill ms/token | layer call, extra us |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in IMPLEMENTATIONS:
        row = report["rows"][name]
        label = f"{name} {row['version']}" if isinstance(row, dict) and "version" in row else name
        lines.append(f"| {label} | " + " | ".join(cell(row[key], key) for key in MEASURES) + " |")
    capabilities = list(next(iter(report["capabilities"].values())))
    lines += ["", "| implementation | " + " | ".join(capabilities) + " |", "| --- |" + " --- |" * len(capabilities)]
    for name in IMPLEMENTATIONS:
        lines.append(f"| {name} | " + " | ".join(report["capabilities"][name][c] for c in capabilities) + " |")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> Path:
    """The per-token cost ratio (steered / own vanilla) by implementation, with min-max bars over trials."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measures = {
        "decode_b1_ms_per_token": "decode, batch 1",
        "decode_b8_ms_per_token": "decode, batch 8",
        "prefill_ms_per_token": f"prefill, {report['prompt_len']} tokens",
    }
    names = [n for n in IMPLEMENTATIONS if isinstance(report["rows"][n].get("decode_b1_ms_per_token"), dict)]
    fig, ax = plt.subplots(figsize=(7.5, 4))
    width = 0.8 / len(measures)
    for k, (key, label) in enumerate(measures.items()):
        cells = [report["rows"][n][key] for n in names]
        ratios = [c["ratio"] for c in cells]
        errors = [
            [r - c["ratio_min"] for r, c in zip(ratios, cells, strict=True)],
            [c["ratio_max"] - r for r, c in zip(ratios, cells, strict=True)],
        ]
        ax.bar([i + (k - 1) * width for i in range(len(names))], ratios, width, yerr=errors, capsize=3, label=label)
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--", label="own vanilla")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("per-token cost, steered / own vanilla")
    ax.set_title(
        f"Steering every layer of {report['model']} (bars: min-max over {report['trials']} trials)", fontsize="medium"
    )
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--quick", action="store_true", help="smoke mode: tiny model, 1 trial, few tokens")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.new_tokens, args.prompt_len = 1, 3, 32
    report = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "peers.json").write_text(json.dumps(report, indent=1))
    (out / "peers.md").write_text(markdown(report) + "\n![cost ratio](peers_cost_ratio.png)\n")
    plot(report, out / "peers_cost_ratio.png")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
