"""The repeng half of the overhead benchmark: runs in its own numpy<2 environment (see
``benchmarks.overhead.repeng_env``) and prints its timings as JSON."""
# ruff: noqa: E401, E701, E702, E731

import json
import sys
import time

import repeng
import torch
import transformers

args = json.loads(sys.argv[1])
torch.manual_seed(0)
if args["path"] is None:
    c = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        max_position_embeddings=1024,
        pad_token_id=0,
    )
    model = transformers.LlamaForCausalLM(c).eval()
else:
    model = transformers.AutoModelForCausalLM.from_pretrained(args["path"], dtype=torch.float32).eval()
n, d = model.config.num_hidden_layers, model.config.hidden_size


def decode(m, batch):
    ids = torch.randint(3, 200, (batch, 8))
    t = time.perf_counter()
    with torch.inference_mode():
        m.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=args["new_tokens"],
            min_new_tokens=args["new_tokens"],
            do_sample=False,
            pad_token_id=0,
        )
    return (time.perf_counter() - t) * 1000 / args["new_tokens"]


def prefill(m):
    ids = torch.randint(3, 200, (1, args["prompt_len"]))
    t = time.perf_counter()
    with torch.inference_mode():
        m(input_ids=ids)
    return (time.perf_counter() - t) * 1000 / args["prompt_len"]


vanilla = {"decode_b1": [], "decode_b8": [], "prefill": []}
steered = {"decode_b1": [], "decode_b8": [], "prefill": []}
control = repeng.ControlModel(model, list(range(n)))
directions = {i: torch.randn(d).numpy() for i in range(n)}
vector = repeng.ControlVector(model_type=model.config.model_type, directions=directions)
for trial in range(args["trials"] + 1):
    for name, target in (("vanilla", vanilla), ("repeng", steered)):
        if name == "repeng":
            control.set_control(vector, 2.0)
        else:
            control.reset()
        for key, fn in (
            ("decode_b1", lambda: decode(control, 1)),
            ("decode_b8", lambda: decode(control, 8)),
            ("prefill", lambda: prefill(control)),
        ):
            v = fn()
            if trial:
                target[key].append(v)
versions = {"transformers": transformers.__version__, "numpy": __import__("numpy").__version__}
print(json.dumps({"vanilla": vanilla, "repeng": steered, "versions": versions}))
