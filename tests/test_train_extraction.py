"""train_steering_vector and extract_activations: reads, aggregators, batching, large data and bad input."""

from __future__ import annotations

import pytest
import torch
from distributed_worker import pairs

import steerable.train.extraction
from steerable import ContrastivePair, SteerableModel, extract_activations, train_steering_vector
from steerable._runtime.layer import SteerableLayer
from steerable.testing.hooks import hooked
from steerable.testing.tiny_models import ARCHS, tiny_model, tiny_tokenizer

PAIRS = [
    ("w5 w6 w7 w40", "w5 w6 w7 w41"),
    ("w9 w12 w40", "w9 w12 w41"),
    ("w20 w21 w22 w23 w24 w40", "w20 w21 w22 w23 w41"),
    ("w30 w40", "w31 w33 w35 w41"),
    ("w50 w51 w52 w40", "w50 w51 w41"),
    ("w60 w61 w62 w63 w64 w65 w40", "w60 w41"),
    ("w70 w40", "w70 w41"),
    ("w80 w81 w82 w40", "w80 w81 w82 w83 w84 w41"),
    ("w11 w13 w15 w40", "w11 w41"),
]


def tokenizer(side: str = "left"):
    tok = tiny_tokenizer()
    tok.padding_side = side
    return tok


def reference_reads(model, text: str, layer: int, read: int | slice = -1) -> torch.Tensor:
    """The block-site activation of ``text`` alone at ``read``, from output_hidden_states."""
    ids = tokenizer()([text], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states[layer + 1][0]
    return hidden[read] if isinstance(read, int) else hidden[read].mean(0)


def reference_mean(model, pairs, layer: int, read=-1) -> torch.Tensor:
    diffs = [reference_reads(model, p, layer, read) - reference_reads(model, n, layer, read) for p, n in pairs]
    return torch.stack(diffs).mean(0)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("batch_size", [1, 8])
def test_mean_equals_hidden_states_reference(arch: str, side: str, batch_size: int) -> None:
    vanilla = tiny_model(arch)
    model = SteerableModel.wrap(tiny_model(arch))
    vec = train_steering_vector(model, tokenizer(side), PAIRS, layers=[0, 1], batch_size=batch_size)
    assert vec.layers == [0, 1] and vec.method == "mean" and vec.model_type == vanilla.config.model_type
    for layer in (0, 1):  # the last hidden state has the final norm applied
        torch.testing.assert_close(vec[layer], reference_mean(vanilla, PAIRS, layer), rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", ["mean", "pca_diff", "pca_center", "logistic"])
def test_results_do_not_depend_on_batch_size_or_padding(method: str) -> None:
    model = SteerableModel.wrap(tiny_model("qwen2"))
    one = train_steering_vector(model, tokenizer("right"), PAIRS, layers=[1], method=method, batch_size=1)
    many = train_steering_vector(model, tokenizer("left"), PAIRS, layers=[1], method=method, batch_size=8)
    torch.testing.assert_close(one[1], many[1], rtol=0, atol=1e-5)


def test_span_callable_and_per_pair_reads() -> None:
    vanilla = tiny_model("llama")
    model = SteerableModel.wrap(tiny_model("llama"))
    span = train_steering_vector(model, tokenizer(), PAIRS, layers=[1], read_token_index=slice(-2, None), batch_size=4)
    torch.testing.assert_close(span[1], reference_mean(vanilla, PAIRS, 1, slice(-2, None)), rtol=0, atol=1e-5)
    # a callable on the text: read the first token of each text
    first = train_steering_vector(model, tokenizer(), PAIRS, layers=[1], read_token_index=lambda text: 0)
    torch.testing.assert_close(first[1], reference_mean(vanilla, PAIRS, 1, 0), rtol=0, atol=1e-5)
    pairs = [ContrastivePair(p, n, read_positive_token_index=0, read_negative_token_index=0) for p, n in PAIRS]
    per_pair = train_steering_vector(model, tokenizer(), pairs, layers=[1], read_token_index=-1, batch_size=3)
    torch.testing.assert_close(per_pair[1], first[1], rtol=0, atol=1e-6)


def test_other_sites_equal_a_hook_reference() -> None:
    vanilla = tiny_model("llama")
    model = SteerableModel.wrap(tiny_model("llama"))
    for site in ("attn", "mlp", "input_norm", "post_attn_norm"):
        seen: dict[str, torch.Tensor] = {}

        def keep(h: torch.Tensor, seen: dict[str, torch.Tensor] = seen) -> torch.Tensor:
            seen["h"] = h[0, -1].clone()
            return h

        diffs = []
        for positive, negative in PAIRS:
            reads = []
            for text in (positive, negative):
                with hooked(vanilla, {2: keep}, site=site), torch.no_grad():
                    vanilla(tokenizer()([text], return_tensors="pt")["input_ids"])
                reads.append(seen["h"])
            diffs.append(reads[0] - reads[1])
        vec = train_steering_vector(model, tokenizer(), PAIRS, layers=[2], site=site, batch_size=4)
        assert vec.site == site
        torch.testing.assert_close(vec[2], torch.stack(diffs).mean(0), rtol=0, atol=1e-5, msg=site)


def test_aggregators_equal_direct_computations() -> None:
    model = SteerableModel.wrap(tiny_model("llama"))
    captured = {}

    def keep(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        captured["pos"], captured["neg"] = pos, neg
        return pos[0] * 0 + 7.0

    custom = train_steering_vector(model, tokenizer(), PAIRS, layers=[1], method=keep)
    assert torch.equal(custom[1], torch.full((32,), 7.0))
    pos, neg = captured["pos"].double(), captured["neg"].double()
    mean_diff = (pos - neg).mean(0)
    diffs = pos - neg
    for method, data in [("pca_diff", diffs), ("pca_center", torch.cat([(pos - neg) / 2, (neg - pos) / 2]))]:
        vec = train_steering_vector(model, tokenizer(), PAIRS, layers=[1], method=method)[1].double()
        top = torch.linalg.eigh(data.T @ data).eigenvectors[:, -1]
        expected = top * (mean_diff @ top)  # sign and scale: the mean difference's projection
        torch.testing.assert_close(vec, expected, rtol=1e-4, atol=1e-5, msg=method)
        assert float(mean_diff @ vec) > 0
    sklearn = pytest.importorskip("sklearn.linear_model")
    mid = (pos + neg) / 2
    x = torch.cat([pos - mid, neg - mid]).numpy()
    y = [1] * len(pos) + [-1] * len(neg)
    coef = torch.tensor(sklearn.LogisticRegression(fit_intercept=False, tol=1e-10, max_iter=10000).fit(x, y).coef_[0])
    vec = train_steering_vector(model, tokenizer(), PAIRS, layers=[1], method="logistic")[1].double()
    assert torch.nn.functional.cosine_similarity(vec, coef, dim=0) > 0.9999


def test_stops_after_the_deepest_layer() -> None:
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    model = SteerableModel.wrap(tiny_model("llama"))
    calls = {"lm_head": 0, "layer2": 0}
    model.lm_head.register_forward_hook(lambda *a: calls.__setitem__("lm_head", calls["lm_head"] + 1))
    model.model.layers[2].register_forward_hook(lambda *a: calls.__setitem__("layer2", calls["layer2"] + 1))
    train_steering_vector(model, tokenizer(), PAIRS, layers=[0, 1], batch_size=4)
    assert calls == {"lm_head": 0, "layer2": 0}
    # nothing is left behind: an idle model runs its own layer classes again
    assert all(type(layer) is LlamaDecoderLayer for layer in model.steerable_layers)


def test_pad_token_is_never_set_on_the_users_tokenizer() -> None:
    model = SteerableModel.wrap(tiny_model("llama"))
    tok = tokenizer()
    with_pad = train_steering_vector(model, tok, PAIRS, layers=[1], batch_size=4)
    tok.pad_token = None
    without_pad = train_steering_vector(model, tok, PAIRS, layers=[1], batch_size=4)
    assert tok.pad_token is None
    torch.testing.assert_close(with_pad[1], without_pad[1], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(pairs=[]), ValueError, "pairs is empty"),
        (dict(pairs=[("w5 w6", "")]), ValueError, "pair 0 has an empty or non-string text"),
        (dict(pairs=[("w5", "w6", "w7")]), TypeError, "pair 0 must be a ContrastivePair"),
        (dict(read_token_index=5), ValueError, "read index 5 is outside 'w5 w6 w7 w40', which has 4 tokens"),
        (dict(read_token_index=slice(10, 12)), ValueError, "selects no token"),
        (dict(method="median"), ValueError, "unknown method 'median'"),
        (dict(layers=[7]), IndexError, "layer 7 is out of range"),
        (dict(layers=[]), ValueError, "layers is empty"),
        (dict(batch_size=0), ValueError, "batch_size must be a positive int"),
        (dict(site="post_attn_norm", model="olmo2"), ValueError, "site 'post_attn_norm' is not available"),
    ],
)
def test_bad_input(kwargs, error, message) -> None:
    model = SteerableModel.wrap(tiny_model(kwargs.pop("model", "llama")))
    args = dict(pairs=PAIRS[:2], layers=[1])
    args.update(kwargs)
    with pytest.raises(error, match=message):
        train_steering_vector(model, tokenizer(), **args)
    assert not any(isinstance(layer, SteerableLayer) for layer in model.steerable_layers)  # nothing left behind
    with pytest.raises(TypeError, match="SteerableModel.wrap"):
        train_steering_vector(tiny_model("llama"), tokenizer(), PAIRS, layers=[1])


@pytest.mark.parametrize("arch", ARCHS)
def test_shared_prefix_path_equals_reference_on_every_architecture(arch: str) -> None:
    """Most PAIRS share a prompt prefix, which runs once through the KV cache; the rest run plain."""
    vanilla = tiny_model(arch)
    model = SteerableModel.wrap(tiny_model(arch))
    for method in ("mean", "pca_diff"):
        vec = train_steering_vector(model, tokenizer(), PAIRS, layers=[0, 1], batch_size=6, method=method)
        if method == "mean":
            for layer in (0, 1):
                torch.testing.assert_close(vec[layer], reference_mean(vanilla, PAIRS, layer), rtol=0, atol=1e-5)
        else:
            one = train_steering_vector(model, tokenizer(), PAIRS, layers=[0, 1], batch_size=1, method=method)
            torch.testing.assert_close(vec[1], one[1], rtol=0, atol=1e-5)


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


def test_an_empty_iterable_is_a_clear_error(setup) -> None:
    model, tok = setup
    with pytest.raises(ValueError, match="pairs is empty"):
        train_steering_vector(model, tok, iter([]), layers=[0])


@pytest.fixture
def pair():
    return tiny_model("llama"), SteerableModel.wrap(tiny_model("llama"))


def test_a_callable_aggregator_of_the_wrong_width_is_refused(pair) -> None:
    _, model = pair
    from steerable.testing.tiny_models import tiny_tokenizer

    with pytest.raises(ValueError, match=r"layer 1: half returned \[16\]; an aggregator must return a tensor \[32\]"):
        train_steering_vector(model, tiny_tokenizer(), [("w5 w6", "w7 w8")], layers=[1], method=half)


def half(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    return (pos - neg).mean(0)[:16]
