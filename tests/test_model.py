"""SteerableModel: wrap/unwrap, class identity, pickling and saving, devices, and the wrapped model in users' tools."""

from __future__ import annotations

import io
import pickle

import pytest
import torch
import transformers
from distributed_worker import pairs

from steerable import SteerableModel, SteeringVector, train_steering_vector
from steerable.testing.hooks import left_pad
from steerable.testing.tiny_models import ARCHS, tiny_model, tiny_tokenizer


def test_pipeline_text_generation_is_steered() -> None:
    tokenizer = tiny_tokenizer()
    vanilla = tiny_model("llama")
    model = SteerableModel.wrap(tiny_model("llama"))
    prompt = "w5 w17 w33 w8"
    run = dict(max_new_tokens=6, do_sample=False, return_full_text=False)
    expected = transformers.pipeline("text-generation", model=vanilla, tokenizer=tokenizer)(prompt, **run)
    pipe = transformers.pipeline("text-generation", model=model, tokenizer=tokenizer)
    assert pipe(prompt, **run) == expected
    vec = SteeringVector({i: 4 * torch.randn(32, generator=torch.Generator().manual_seed(i)) for i in range(3)})
    with model.steer(vec, 2.0):
        steered = pipe(prompt, **run)
    assert steered != expected
    assert pipe(prompt, **run) == expected


def test_from_pretrained_passes_kwargs_through(tmp_path) -> None:
    tiny_model("qwen2").save_pretrained(tmp_path)
    model = SteerableModel.from_pretrained(tmp_path, dtype=torch.bfloat16, device_map="cpu")
    assert isinstance(model, SteerableModel) and isinstance(model, transformers.Qwen2ForCausalLM)
    assert model.dtype == torch.bfloat16
    vanilla = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16, device_map="cpu")
    ids = torch.tensor([[4, 5, 6, 7]])
    assert torch.equal(model(ids).logits, vanilla(ids).logits)
    again = type(model).from_pretrained(tmp_path)  # on the wrapped class: loads that class
    assert isinstance(again, SteerableModel) and type(again) is type(model)


def test_half_and_to_move_steering_buffers() -> None:
    model = SteerableModel.wrap(tiny_model("gpt2"))
    vec = SteeringVector({1: torch.randn(32)})
    ids = torch.tensor([[4, 5, 6, 7]])
    with model.steer(vec, 1.0):
        model.half()
        assert {b.dtype for n, b in model.named_buffers() if "steering_" in n} == {torch.float16}
        model.to(torch.float32)
        steered = model(ids).logits
    vanilla = tiny_model("gpt2")
    # weights and the steering buffer both went through fp16: the reference does the same
    delta = vec[1].half().float()
    vanilla.transformer.h[1].register_forward_hook(
        lambda m, i, o: (o[0] + delta, *o[1:]) if isinstance(o, tuple) else o + delta
    )
    vanilla.half().to(torch.float32)
    torch.testing.assert_close(steered, vanilla(ids).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_gradients_flow_through_steering(arch: str) -> None:
    model = SteerableModel.wrap(tiny_model(arch))
    with model.steer(SteeringVector({1: torch.randn(32)}), 1.0):  # fine-tuning a steered model
        loss = model(torch.tensor([[4, 5, 6]])).logits.square().mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_accelerate_offload_hooks_still_reach_the_steerable_forward() -> None:
    accelerate = pytest.importorskip("accelerate")
    vanilla = tiny_model("llama")
    ids = torch.tensor([[4, 5, 6, 7]])
    vec = SteeringVector({1: torch.randn(32)})
    with torch.no_grad():
        vanilla.model.layers[1].register_forward_hook(lambda m, i, o: o + vec[1])
        expected = vanilla(ids).logits
    model = tiny_model("llama")
    accelerate.cpu_offload(model, execution_device=torch.device("cpu"))  # hooks on every module first
    model = SteerableModel.wrap(model)
    with torch.no_grad(), model.steer(vec, 1.0):
        got = model(ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


# -- a model split over devices ------------------------------------------------------------------
def split_maps() -> list[dict[str, str]]:
    maps = [
        {
            "model.embed_tokens": "cpu",
            "model.layers.0": "cpu",
            "model.layers.1": "disk",
            "model.layers.2": "cpu",
            "model.norm": "cpu",
            "model.rotary_emb": "cpu",
            "lm_head": "cpu",
        }
    ]
    if torch.cuda.is_available():
        maps.append(
            {
                "model.embed_tokens": "cpu",
                "model.layers.0": "cpu",
                "model.layers.1": 0,
                "model.layers.2": 0,
                "model.norm": 0,
                "model.rotary_emb": 0,
                "lm_head": 0,
            }
        )
    return maps


@pytest.mark.parametrize("device_map", split_maps(), ids=lambda m: "cpu+disk" if "disk" in m.values() else "cpu+cuda")
def test_a_model_split_over_devices_equals_one_device(tmp_path, device_map) -> None:
    tiny_model("llama").save_pretrained(tmp_path / "model")
    single = SteerableModel.from_pretrained(tmp_path / "model", attn_implementation="eager").eval()
    split = SteerableModel.from_pretrained(
        tmp_path / "model", device_map=device_map, offload_folder=str(tmp_path / "offload"), attn_implementation="eager"
    ).eval()
    tok = tiny_tokenizer()
    ids, mask = left_pad([[5, 6, 7, 8], [9, 10]])
    vector = SteeringVector(
        {layer: torch.randn(32, generator=torch.Generator().manual_seed(layer)) for layer in range(3)}
    )
    results = []
    for model in (single, split):
        with torch.no_grad():
            with model.steer(vector, 2.0, min_token_index=1):
                logits = model(input_ids=ids, attention_mask=mask).logits.cpu()
                tokens = model.generate(
                    input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0
                )
            with model.record(layers=[0, 1, 2], to_cpu=True) as recording:
                model(input_ids=ids, attention_mask=mask)
        trained = train_steering_vector(model, tok, pairs(5), layers=[0, 1, 2], method="pca_diff")
        results.append((logits, tokens.cpu(), {k: v for k, v in recording.items()}, trained))
    (l1, t1, r1, v1), (l2, t2, r2, v2) = results
    torch.testing.assert_close(l2, l1, rtol=0, atol=1e-5)
    assert torch.equal(t1, t2)
    for layer in range(3):
        torch.testing.assert_close(r2[layer], r1[layer], rtol=0, atol=1e-5)
        torch.testing.assert_close(v2[layer], v1[layer], rtol=0, atol=1e-5)
    with split.steer(vector, 1.0):  # each steering buffer sits on its layer's device (offloaded layers: cpu)
        for layer, module in enumerate(split.steerable_layers):
            placed = {b.device.type for name, b in module.named_buffers() if name.startswith("steering_")}
            assert placed == {"cuda" if device_map[f"model.layers.{layer}"] == 0 else "cpu"}


PROMPTS = [[5, 17, 33, 8, 61, 12, 40], [9, 70, 23, 4]]


def random_vector(layers: list[int], d: int = 32, seed: int = 1, scale: float = 1.0) -> SteeringVector:
    generator = torch.Generator().manual_seed(seed)
    return SteeringVector({i: scale * torch.randn(d, generator=generator) for i in layers})


@pytest.mark.parametrize("arch", ARCHS)
def test_save_pretrained_loads_in_plain_transformers(arch: str, tmp_path) -> None:
    model = SteerableModel.wrap(tiny_model(arch))
    ids = torch.tensor([PROMPTS[0]])
    with model.steer(random_vector([1]), 4.0):  # steering is never saved
        model.save_pretrained(tmp_path)
    expected = model(ids).logits
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
    assert not isinstance(loaded, SteerableModel)
    assert type(loaded).__name__ == type(model).__name__
    assert loaded.config.architectures == [type(model).__name__]
    assert torch.equal(loaded(ids).logits, expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_unwrap_restores_original_classes_and_outputs(arch: str) -> None:
    vanilla = tiny_model(arch)
    ids = torch.tensor([PROMPTS[1]])
    expected = vanilla(ids).logits
    classes = {name: type(m) for name, m in vanilla.named_modules()}
    model = SteerableModel.wrap(tiny_model(arch))
    assert SteerableModel.wrap(model) is model  # wrapping twice is a no-op
    vec = random_vector([0, 1, 2])
    model.steer(vec, 3.0, min_token_index=1)
    model.steer(SteeringVector({1: vec[1]}, site="mlp"), 1.0)
    restored = SteerableModel.unwrap(model)
    assert restored is model
    assert {name: type(m) for name, m in model.named_modules()} == classes
    assert not any(name.startswith("steering_") for name, _ in model.named_buffers())
    assert not hasattr(model, "steer")
    assert torch.equal(model(ids).logits, expected)


IDS, MASK = left_pad([[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16]])


@pytest.fixture
def pair():
    return tiny_model("llama"), SteerableModel.wrap(tiny_model("llama"))


def logits(model, **kwargs):
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK, **kwargs).logits


def test_pickle_and_torch_save_store_the_plain_model_which_re_wraps(pair) -> None:
    vanilla, model = pair
    with model.steer(SteeringVector({1: torch.randn(32)}), 2.0, min_token_index=1):
        blob = pickle.dumps(model)
        buffer = io.BytesIO()
        torch.save(model, buffer)
    plain = pickle.loads(blob)
    assert type(plain) is type(vanilla) and type(plain.model.layers[1]) is type(vanilla.model.layers[1])
    assert not any("steering" in name for name, _ in plain.named_buffers())
    assert torch.equal(logits(plain), logits(vanilla))
    buffer.seek(0)
    again = SteerableModel.wrap(torch.load(buffer, weights_only=False))
    v = SteeringVector({1: torch.randn(32)})
    with again.steer(v, 2.0), model.steer(v, 2.0):
        assert torch.equal(logits(again), logits(model))
