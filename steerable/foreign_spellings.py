"""Other libraries' spellings of steerable's arguments (steering-vectors, repeng, CAST): refused with an
error that names steerable's spelling, never silently taken with another meaning."""

from __future__ import annotations

from typing import Any

#: argument name -> what to write instead
SPELLINGS: dict[str, str] = {
    "aggregator": "method= ('mean', 'pca_diff', 'pca_center', 'logistic' or a callable (pos, neg) -> direction); "
    "steering-vectors' pca_aggregator() is method='pca_diff', normalize=True",
    "layer_type": "site= ('block', 'attn', 'mlp', 'input_norm', 'post_attn_norm'; the seed's names work as values)",
    "layer_config": "site= (steerable finds the modules itself; for a new architecture use "
    "steerable.register_architecture)",
    "layer_nums": "layers=",
    "hidden_layers": "layers= (repeng's default range(-1, -n, -1) is layers=range(-1, -n, -1))",
    "layer_ids": "layers=",
    "max_batch_size": "batch_size=",
    "tqdm_desc": "show_progress=",
    "clone_activations": "nothing (recorded activations are always detached copies)",
    "coeff": "multiplier=",
    "normalize_output": "norm_preserving=True",
}


def refuse(function: str, given: dict[str, Any], where: str | None = None) -> None:
    """Raise a TypeError for the first of ``given`` (keyword arguments ``function`` does not take)."""
    if not given:
        return
    name = next(iter(given))
    hint = SPELLINGS.get(name)
    if hint is None:
        raise TypeError(f"{function}() got an unexpected keyword argument {name!r}")
    drop_in = f"; or keep the code and import from {where}" if where else ""
    raise TypeError(f"{function}() takes no {name}=: in steerable write {hint}{drop_in}")


SEED = "steerable.compat.steering_vectors"
REPENG = "steerable.compat.repeng"
