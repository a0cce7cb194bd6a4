"""The repeng half of the overhead benchmark: runs in its own numpy<2 environment (see
``benchmarks.overhead.repeng_env``; steerable is not installed there, so it imports the timers from
this folder's measure.py as a top-level module) and prints its timings as JSON."""
# ruff: noqa: E401, E701, E702, E731

import json
import sys

import repeng
import torch
import transformers
from measure import decode_ms_per_token, prefill_ms_per_token  # this folder is the script's sys.path[0]

args = json.loads(sys.argv[1])
torch.manual_seed(0)
if args["path"] is None:  # the tiny Llama of steerable.testing.tiny_models.tiny_llama, rebuilt from its config
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig.from_dict(args["config"])).eval()
else:
    model = transformers.AutoModelForCausalLM.from_pretrained(args["path"], dtype=torch.float32).eval()
n, d = model.config.num_hidden_layers, model.config.hidden_size


def decode(m, batch):
    return decode_ms_per_token(m, batch, args["new_tokens"], "cpu")


def prefill(m):
    return prefill_ms_per_token(m, args["prompt_len"], "cpu")


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
