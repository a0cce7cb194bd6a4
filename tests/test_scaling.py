"""Scaling: training from any iterable without materialising it, reads kept in memory-mapped files,
two processes with torch.distributed (gloo, CPU) equal to one, and models split over devices."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp
from distributed_worker import pairs, train

import steerable.train.extraction
from steerable import (
    Completion,
    SteerableModel,
    SteeringVector,
    extract_activations,
    optimize_steering_vector,
    train_steering_vector,
)
from steerable.testing.hooks import left_pad
from steerable.testing.tiny_models import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def setup():
    return SteerableModel.wrap(tiny_model("llama")), tiny_tokenizer()


@pytest.mark.parametrize("method", ["mean", "pca_diff", "logistic"])
def test_a_generator_equals_a_list_across_chunks(setup, monkeypatch, method) -> None:
    model, tok = setup
    data = pairs(11)
    expected = train_steering_vector(model, tok, data, layers=[0, 2], method=method, batch_size=4)
    monkeypatch.setattr(steerable.train.extraction, "CHUNK_PAIRS", 4)  # 11 pairs: chunks of 4, 4 and 3
    consumed = []

    def generator():
        for pair in data:
            consumed.append(pair)
            yield pair

    got = train_steering_vector(model, tok, generator(), layers=[0, 2], method=method, batch_size=4)
    assert consumed == data
    for layer in (0, 2):
        torch.testing.assert_close(got[layer], expected[layer], rtol=0, atol=1e-6)


def test_reads_in_memory_mapped_files_equal_reads_in_memory(setup, tmp_path) -> None:
    model, tok = setup
    data = pairs(9)
    positive, negative = extract_activations(model, tok, data, layers=[1, 2])
    mapped_pos, mapped_neg = extract_activations(model, tok, data, layers=[1, 2], offload_dir=tmp_path / "reads")
    for layer in (1, 2):
        assert torch.equal(mapped_pos[layer], positive[layer]) and torch.equal(mapped_neg[layer], negative[layer])
    assert sorted(p.name for p in (tmp_path / "reads").iterdir())[:2] == ["layer1_negative.f32", "layer1_positive.f32"]
    assert (tmp_path / "reads" / "layer1_positive.f32").stat().st_size == 9 * 32 * 4  # reads only, [n, d] fp32
    expected = train_steering_vector(model, tok, data, layers=[1], method="pca_center")
    got = train_steering_vector(model, tok, data, layers=[1], method="pca_center", offload_dir=tmp_path)
    torch.testing.assert_close(got[1], expected[1], rtol=0, atol=1e-6)
    assert list(tmp_path.iterdir()) == [tmp_path / "reads"]  # training's scratch files are removed


@pytest.mark.parametrize("n_pairs", [7, 1])  # 4/3 pairs per rank; and one rank with none
def test_two_processes_equal_one(setup, tmp_path, n_pairs) -> None:
    mp.spawn(train, args=(2, str(tmp_path), n_pairs), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    model, tok = setup
    for method in ("mean", "pca_diff", "logistic"):
        alone = train_steering_vector(model, tok, pairs(n_pairs), layers=[0, 2], method=method, batch_size=3)
        for got in ranks:
            for layer in (0, 2):
                torch.testing.assert_close(got[method][layer], alone[layer], rtol=0, atol=1e-6)
    data = [Completion(f"w{5 + k} w{6 + k}", f" w{30 + k} w{31 + k}") for k in range(8)]
    learned = optimize_steering_vector(model, tok, data, [1], "likelihood", steps=3, batch_size=4, lr=0.05)
    for got in ranks:
        torch.testing.assert_close(got["likelihood"][1], learned[1], rtol=0, atol=1e-6)


def test_an_empty_iterable_is_a_clear_error(setup) -> None:
    model, tok = setup
    with pytest.raises(ValueError, match="pairs is empty"):
        train_steering_vector(model, tok, iter([]), layers=[0])


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
