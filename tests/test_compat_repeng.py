"""``steerable.compat.repeng`` against repeng's own algorithm (read_representations: last-token block
outputs from output_hidden_states, scikit-learn PCA, repeng's sign rule), run here on a vanilla model;
and its ControlModel against a forward hook doing what repeng's ControlModule does.

Run this file as a script with repeng's own environment to compare with repeng itself:
``.venv-repeng/bin/python tests/test_compat_repeng.py`` (repeng 0.4 needs numpy<2; see docs/migrating.md).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from test_train_extraction import PAIRS, tokenizer

from steerable import SteerableModel, SteeringVector
from steerable.compat.repeng import ControlModel, ControlVector, DatasetEntry
from steerable.testing.hooks import hooked
from steerable.testing.tiny_models import tiny_model

DATASET = [DatasetEntry(positive=p, negative=n) for p, n in PAIRS]
IDS = torch.tensor([[5, 6, 7, 8, 9, 10]])


def repeng_reference(model, tok, dataset, layers, method: str) -> dict[int, np.ndarray]:
    """repeng 0.4's read_representations, step for step, on one text at a time."""
    hidden: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    for text in [s for e in dataset for s in (e.positive, e.negative)]:
        with torch.no_grad():
            states = model(**tok([text], return_tensors="pt"), output_hidden_states=True).hidden_states
        for layer in layers:
            hidden[layer].append(states[layer + 1][0, -1].float().numpy())
    out = {}
    for layer in layers:
        h = np.vstack(hidden[layer])
        if method == "pca_diff":
            train = h[::2] - h[1::2]
        else:
            center = (h[::2] + h[1::2]) / 2
            train = h.copy()
            train[::2] -= center
            train[1::2] -= center
        d = PCA(n_components=1, whiten=False).fit(train).components_.astype(np.float32).squeeze(axis=0)
        projected = h @ d / np.linalg.norm(d)
        smaller = np.mean([projected[i] < projected[i + 1] for i in range(0, len(h), 2)])
        larger = np.mean([projected[i] > projected[i + 1] for i in range(0, len(h), 2)])
        out[layer] = -d if smaller > larger else d
    return out


def cosines(ours: dict[int, np.ndarray], theirs: dict[int, np.ndarray]) -> dict[int, float]:
    assert sorted(ours) == sorted(theirs)
    return {k: float(ours[k] @ theirs[k] / np.linalg.norm(ours[k]) / np.linalg.norm(theirs[k])) for k in ours}


@pytest.mark.parametrize("method", ["pca_diff", "pca_center"])
def test_train_gives_repengs_vectors(method: str) -> None:
    vanilla, model = tiny_model("llama"), tiny_model("llama")
    ours = ControlVector.train(model, tokenizer("right"), DATASET, method=method)
    # repeng's default layers: range(-1, -n, -1), stored as absolute ones
    assert sorted(ours.directions) == [1, 2] and ours.model_type == "llama"
    theirs = repeng_reference(vanilla, tokenizer(), DATASET, [2, 1], method)
    for layer, cosine in cosines(ours.directions, theirs).items():
        assert cosine > 0.9999, (layer, cosine)  # same sign too: repeng's sign rule
        assert np.linalg.norm(ours.directions[layer]) == pytest.approx(1, abs=1e-5)


def test_repeng_pca_diff_is_centred_and_steerables_is_not() -> None:
    """Finding 2: the same name, two methods. repeng's pca_diff centres the differences; steerable's does
    not (it is steering-vectors' pca); CAST's pca_pairwise is steerable's pca_center."""
    from steerable.train.aggregators import pca_diff

    torch.manual_seed(0)
    offset = torch.randn(16) * 3
    pos = torch.randn(40, 16) + offset
    neg = torch.randn(40, 16)
    from steerable.compat.repeng.extract import direction

    centred = direction(pos, neg, "pca_diff")
    uncentred = pca_diff(pos, neg)
    reference = PCA(n_components=1).fit((pos - neg).numpy()).components_[0]
    assert abs(float(torch.nn.functional.cosine_similarity(centred.double(), torch.tensor(reference), dim=0))) > 0.9999
    cosine = float(torch.nn.functional.cosine_similarity(centred, uncentred, dim=0))
    assert abs(cosine) < 0.9  # a different direction, not a rounding difference


def test_control_model_steers_as_repengs_control_module() -> None:
    vanilla, model = tiny_model("llama"), tiny_model("llama")
    vector = ControlVector("llama", {i: np.random.default_rng(i).normal(size=32).astype(np.float32) for i in (0, 1, 2)})
    control = ControlModel(model, [-1, 1])
    assert control.layer_ids == [2, 1]
    with torch.no_grad():
        control.set_control(vector, 1.5)
        steered = control(IDS).logits
        with hooked(vanilla, {i: (lambda h, i=i: h + 1.5 * torch.tensor(vector.directions[i])) for i in (1, 2)}):
            expected = vanilla(IDS).logits
        torch.testing.assert_close(steered, expected, rtol=0, atol=1e-5)
        # repeng's operator returns the new state; here it is taken in that form (finding 3)
        control.set_control(vector, 1.5, operator=lambda current, c: current * 0.5 + c)
        halved = control(IDS).logits
        with hooked(vanilla, {i: (lambda h, i=i: h * 0.5 + 1.5 * torch.tensor(vector.directions[i])) for i in (1, 2)}):
            expected = vanilla(IDS).logits
        torch.testing.assert_close(halved, expected, rtol=0, atol=1e-5)
        control.reset()
        torch.testing.assert_close(control(IDS).logits, vanilla(IDS).logits, rtol=0, atol=1e-6)


def test_arithmetic_and_gguf_round_trip(tmp_path) -> None:
    a = ControlVector("llama", {1: np.ones(4, np.float32), 2: np.full(4, 2.0, np.float32)})
    b = ControlVector("llama", {2: np.ones(4, np.float32), 3: np.full(4, 3.0, np.float32)})
    combined = 2 * a - b / 2
    assert sorted(combined.directions) == [1, 2, 3]
    np.testing.assert_allclose(combined.directions[2], np.full(4, 3.5))
    np.testing.assert_allclose(combined.directions[3], np.full(4, -1.5))
    np.testing.assert_allclose((-a).directions[1], -np.ones(4))
    combined.export_gguf(tmp_path / "v.gguf")
    back = ControlVector.import_gguf(tmp_path / "v.gguf")
    assert back == combined and back.model_type == "llama"
    # the steerable view steers block i's output with directions[i]
    assert torch.equal(combined.to_steerable()[3], torch.full((4,), -1.5))
    assert isinstance(
        SteeringVector.from_gguf(tmp_path / "v.gguf", num_layers=4).select(range(-1, -3, -1)), SteeringVector
    )


def test_train_through_a_control_model_and_the_wrapped_model_is_steerable() -> None:
    model = tiny_model("llama")
    control = ControlModel(model, [1])
    vector = ControlVector.train(control, tokenizer("right"), DATASET, hidden_layers=[1])
    assert sorted(vector.directions) == [1] and isinstance(model, SteerableModel)


def _compare_with_repeng() -> None:  # run under repeng's environment: prints cosines with repeng itself
    import json
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import repeng

    with tempfile.TemporaryDirectory() as tmp:
        tiny_model("llama").save_pretrained(tmp)
        tok = tokenizer("right")
        for method in ("pca_diff", "pca_center"):
            theirs = repeng.ControlVector.train(
                tiny_model("llama"), tok, [repeng.DatasetEntry(p, n) for p, n in PAIRS], method=method
            )
            code = (
                "import json,sys; sys.path.insert(0, 'tests'); from test_compat_repeng import *; "
                f"v = ControlVector.train(tiny_model('llama'), tokenizer('right'), DATASET, method={method!r}); "
                "print(json.dumps({k: d.tolist() for k, d in v.directions.items()}))"
            )
            main = Path(__file__).resolve().parents[1] / ".." / "main" / ".venv" / "bin" / "python"
            python = sys.argv[1] if len(sys.argv) > 1 else str(main)
            done = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
            ours = {
                int(k): np.array(v, np.float32) for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()
            }
            norms = {k: float(np.linalg.norm(v)) for k, v in ours.items()}
            print(method, "cosine with repeng", cosines(ours, theirs.directions), "norms", norms)


if __name__ == "__main__":
    _compare_with_repeng()
