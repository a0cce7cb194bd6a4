"""Training across processes equals one process."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp
from distributed_worker import pairs, train

from steerable import (
    Completion,
    SteerableModel,
    optimize_steering_vector,
    train_steering_vector,
)
from steerable.testing.tiny_models import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def setup():
    return SteerableModel.wrap(tiny_model("llama")), tiny_tokenizer()


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
