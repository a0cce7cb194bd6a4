"""0.1 import paths still work for this release: each warns DeprecationWarning naming the new path and
gives the same objects."""

from __future__ import annotations

import importlib
import sys
import warnings

import pytest

import steerable
from steerable._deprecated import MOVED

TAUGHT = [  # (old module, name) as the 0.1 README taught them
    ("steerable.training", "train_steering_vector"),
    ("steerable.training", "ContrastivePair"),
    ("steerable.sweep", "sweep_ab"),
    ("steerable.diagnostics", "separation_report"),
    ("steerable.datasets", "chat_prompt"),
    ("steerable.datasets", "sentiment_pairs"),
    ("steerable.ab", "ab_pairs"),
    ("steerable.offline", "smollm2"),
    ("steerable.interop", "from_gguf"),
    ("steerable.steering", "SteeringHandle"),
    ("steerable.evaluation", "ab_scores"),
    ("steerable.learned", "optimize_steering_vector"),
]


@pytest.mark.parametrize(("old", "name"), TAUGHT)
def test_an_old_path_warns_and_gives_the_new_object(old, name) -> None:
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved in steerable 0.2: import from"):
        module = importlib.import_module(old)
    found = getattr(module, name)
    homes = [importlib.import_module(target) for target in MOVED[old]]
    assert any(getattr(home, name, None) is found for home in homes)


def test_every_moved_module_resolves_its_names() -> None:
    for old, targets in MOVED.items():
        sys.modules.pop(old, None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = importlib.import_module(old)
        names = dir(module)
        assert names, old
        for name in names:
            assert getattr(module, name) is not None, (old, name)
        with pytest.raises(AttributeError, match="moved to"):
            module.no_such_name  # noqa: B018
        assert all(importlib.import_module(t) for t in targets)


def test_find_best_condition_point_from_conditions_warns_and_is_the_same_function() -> None:
    import steerable.conditions as conditions

    with pytest.warns(DeprecationWarning, match="steerable.train.condition_search"):
        found = conditions.find_best_condition_point
    assert found is steerable.find_best_condition_point


def test_the_public_top_level_is_small_and_has_the_spec() -> None:
    public = [name for name in steerable.__all__ if not name.startswith("_")]
    assert 15 <= len(public) <= 25 and "Steering" in public
    assert all(hasattr(steerable, name) for name in public)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        importlib.reload(steerable)  # importing the package itself warns nothing
