"""Fine-tuning pipelines with a steering active: HF Trainer, PEFT LoRA (both orders), TRL SFT and DPO
(gradient checkpointing on, as TRL's defaults have it), optimum-quanto. The oracle is the plain
model with forward hooks doing the same steering, without checkpointing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import pytest
import torch
import transformers

from steerable import SteerableModel, SteeringVector
from steerable.testing.tiny_models import tiny_model, tiny_tokenizer

peft = pytest.importorskip("peft")
trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

IDS = torch.tensor([[0, 0, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14]])
MASK = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
MIN_TOKEN = 2


def direction() -> torch.Tensor:
    return torch.randn(32, generator=torch.Generator().manual_seed(11))


@contextmanager
def reference(model: torch.nn.Module, layer: int = 1, multiplier: float = 2.0) -> Iterator[None]:
    """Hooks doing `ablate_then_add` at tokens from MIN_TOKEN on (absolute, per row), positions read
    from the attention mask each forward: the oracle."""
    v = direction()
    unit = v / v.norm()
    seen: dict[str, torch.Tensor] = {}
    decoder = model.get_base_model() if hasattr(model, "get_base_model") else model
    stack = decoder.model

    def pre(_module, args, kwargs):
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        seen["mask"] = mask if isinstance(mask, torch.Tensor) and mask.ndim == 2 else torch.ones_like(ids)

    def edit(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        mask = seen["mask"][:, -hidden.shape[1] :]
        positions = seen["mask"].cumsum(-1)[:, -hidden.shape[1] :] - 1
        selected = ((positions >= MIN_TOKEN) & (mask == 1))[..., None]
        steered = hidden - (hidden @ unit)[..., None] * unit + multiplier * v
        hidden = torch.where(selected, steered, hidden)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handles = [stack.register_forward_pre_hook(pre, with_kwargs=True), stack.layers[layer].register_forward_hook(edit)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def steering(model) -> object:
    return SteerableModel.of(model).steer(
        SteeringVector({1: direction()}), 2.0, operator="ablate_then_add", min_token_index=MIN_TOKEN
    )


def weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_same_weights(a: dict, b: dict, atol: float = 2e-5) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=atol, msg=name)


def train_args(cls, **kwargs):
    common = dict(
        output_dir="/tmp/steerable-test-out",
        max_steps=3,
        learning_rate=0.1,
        optim="sgd",  # linear in the gradients: Adam would amplify float noise on near-zero gradients
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        seed=0,
        logging_strategy="no",
        disable_tqdm=True,
        bf16=False,  # TRL's configs default to bf16 autocast; the fp32 oracle compares exactly in fp32
    )
    return cls(**{**common, **kwargs})


def trained(model, make_trainer, how: str) -> dict[str, torch.Tensor]:
    """Train ``model`` with ``make_trainer(model)``, steered by steerable (``"steer"``), by the hook
    oracle (``"hooks"``) or not at all (``"plain"``); returns the trained weights."""
    context = {"steer": lambda: steering(model), "hooks": lambda: reference(model), "plain": nullcontext}[how]()
    with context:
        make_trainer(model).train()
    return weights(model)


# -- HF Trainer ------------------------------------------------------------------------------------
def test_trainer_with_a_steering_equals_hooks_and_saves_a_plain_model(tmp_path) -> None:
    rows = [
        {"input_ids": IDS[i], "attention_mask": MASK[i], "labels": IDS[i].masked_fill(MASK[i] == 0, -100)}
        for i in (0, 1)
    ] * 3

    def make(gradient_checkpointing: bool):
        args = train_args(
            transformers.TrainingArguments, per_device_train_batch_size=2, gradient_checkpointing=gradient_checkpointing
        )
        return lambda model: transformers.Trainer(model=model, args=args, train_dataset=rows)

    ours = SteerableModel.wrap(tiny_model("llama")).train()
    steered = trained(ours, make(True), "steer")
    assert_same_weights(steered, trained(tiny_model("llama").train(), make(False), "hooks"))
    plain = trained(tiny_model("llama").train(), make(False), "plain")
    assert not torch.allclose(steered["model.layers.0.mlp.up_proj.weight"], plain["model.layers.0.mlp.up_proj.weight"])

    ours.save_pretrained(tmp_path / "saved")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "saved", attn_implementation="eager").eval()
    assert type(loaded).__name__ == "LlamaForCausalLM" and not isinstance(loaded, SteerableModel)
    with torch.no_grad():
        assert torch.equal(loaded(IDS, attention_mask=MASK).logits, ours.eval()(IDS, attention_mask=MASK).logits)


# -- PEFT ------------------------------------------------------------------------------------------
def lora(model):
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    torch.manual_seed(5)
    return peft.get_peft_model(model, config)


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK).logits


def test_peft_on_a_steerable_model_steers_through_steerable_model_of() -> None:
    ours, theirs = lora(SteerableModel.wrap(tiny_model("llama"))), lora(tiny_model("llama"))
    assert not isinstance(ours, SteerableModel)  # PEFT's wrapper; the steerable model is inside it
    assert SteerableModel.of(ours) is ours.get_base_model()
    with steering(ours):
        got = logits(ours)
    with reference(theirs):
        expected = logits(theirs)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="holds no steerable model"):
        SteerableModel.of(theirs)


def test_a_wrapped_peft_model_steers_and_merges_into_a_fully_steerable_model() -> None:
    ours, theirs = SteerableModel.wrap(lora(tiny_model("llama"))), lora(tiny_model("llama"))
    handle = steering(ours)
    with reference(theirs):
        expected = logits(theirs)
    torch.testing.assert_close(logits(ours), expected, rtol=1e-5, atol=1e-5)
    merged = ours.merge_and_unload()
    assert isinstance(merged, SteerableModel) and merged.is_steering  # never a plain model with steerable layers
    assert not isinstance(ours, SteerableModel)
    torch.testing.assert_close(logits(merged), expected, rtol=1e-4, atol=1e-4)
    handle.remove()
    theirs_merged = theirs.merge_and_unload()
    torch.testing.assert_close(logits(merged), logits(theirs_merged), rtol=1e-5, atol=1e-5)
    assert type(SteerableModel.unwrap(merged)) is type(theirs_merged)


# -- TRL -------------------------------------------------------------------------------------------
def left_padded_tokenizer():
    tokenizer = tiny_tokenizer()
    tokenizer.padding_side = "left"
    return tokenizer


SFT_ROWS = [
    {"prompt": "w5 w6 w7", "completion": " w40 w41"},
    {"prompt": "w8", "completion": " w42 w43 w44"},
    {"prompt": "w9 w10", "completion": " w45"},
    {"prompt": "w11 w12 w13 w14", "completion": " w46 w47"},
]
DPO_ROWS = [
    {"prompt": "w5 w6", "chosen": " w40", "rejected": " w50 w51"},
    {"prompt": "w7 w8 w9", "chosen": " w41 w42", "rejected": " w52"},
]


def test_trl_sft_with_checkpointing_equals_hooks_without() -> None:
    data = datasets.Dataset.from_list(SFT_ROWS)

    def make(gradient_checkpointing: bool):
        args = train_args(trl.SFTConfig, per_device_train_batch_size=4, gradient_checkpointing=gradient_checkpointing)
        return lambda model: trl.SFTTrainer(
            model=model, args=args, train_dataset=data, processing_class=left_padded_tokenizer()
        )

    steered = trained(SteerableModel.wrap(tiny_model("llama")).train(), make(True), "steer")
    assert_same_weights(steered, trained(tiny_model("llama").train(), make(False), "hooks"))
    plain = trained(tiny_model("llama").train(), make(False), "plain")
    assert not torch.allclose(steered["model.layers.0.mlp.up_proj.weight"], plain["model.layers.0.mlp.up_proj.weight"])


def test_trl_dpo_with_checkpointing_equals_hooks_without() -> None:
    data = datasets.Dataset.from_list(DPO_ROWS)

    def make(gradient_checkpointing: bool):
        args = train_args(trl.DPOConfig, per_device_train_batch_size=2, gradient_checkpointing=gradient_checkpointing)
        return lambda model: trl.DPOTrainer(
            model=model,
            ref_model=tiny_model("llama"),  # the reference is the plain model
            args=args,
            train_dataset=data,
            processing_class=left_padded_tokenizer(),
        )

    steered = trained(SteerableModel.wrap(tiny_model("llama")).train(), make(True), "steer")
    assert_same_weights(steered, trained(tiny_model("llama").train(), make(False), "hooks"))


# -- quantized models ------------------------------------------------------------------------------
def test_optimum_quanto_int8_steers_like_hooks_on_the_same_quantized_model() -> None:
    quanto = pytest.importorskip("optimum.quanto")

    def quantized():
        model = tiny_model("llama")
        quanto.quantize(model, weights=quanto.qint8)
        quanto.freeze(model)
        return model

    vanilla = quantized()
    with reference(vanilla):
        expected = logits(vanilla)
    wrapped = SteerableModel.wrap(quantized())
    with steering(wrapped):
        got = logits(wrapped)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, logits(wrapped), atol=1e-3)  # the steering did something
