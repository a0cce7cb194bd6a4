"""steering-vectors 0.12.2's public API on steerable's engine: change ``from steering_vectors import ...``
to ``from steerable.compat.steering_vectors import ...`` and keep the code.

Same defaults and results as the seed (mean vectors, unit-norm PCA and logistic directions, its layer
numbering and layer types), except where the seed is wrong: positions under left padding and with a KV
cache (see ``steering_vector`` and ``train_steering_vector``, and docs/migrating.md).
"""

from steerable.compat.steering_vectors.aggregators import (
    Aggregator,
    logistic_aggregator,
    mean_aggregator,
    pca_aggregator,
)
from steerable.compat.steering_vectors.layer_matching import (
    LayerMatcher,
    LayerType,
    ModelLayerConfig,
    get_num_matching_layers,
    guess_and_enhance_layer_config,
)
from steerable.compat.steering_vectors.record_activations import record_activations
from steerable.compat.steering_vectors.steering_operators import (
    PatchDeltaOperator,
    ablation_operator,
    ablation_then_addition_operator,
    addition_operator,
)
from steerable.compat.steering_vectors.steering_vector import SteeringPatchHandle, SteeringVector
from steerable.compat.steering_vectors.train_steering_vector import (
    SteeringVectorTrainingSample,
    aggregate_activations,
    extract_activations,
    train_steering_vector,
)

__version__ = "0.12.2"

__all__ = [
    "Aggregator",
    "mean_aggregator",
    "pca_aggregator",
    "logistic_aggregator",
    "LayerType",
    "LayerMatcher",
    "ModelLayerConfig",
    "get_num_matching_layers",
    "guess_and_enhance_layer_config",
    "PatchDeltaOperator",
    "record_activations",
    "SteeringVector",
    "SteeringPatchHandle",
    "train_steering_vector",
    "SteeringVectorTrainingSample",
    "aggregate_activations",
    "extract_activations",
    "ablation_operator",
    "addition_operator",
    "ablation_then_addition_operator",
]
