"""steerable: steering vectors for Hugging Face transformers, inline in the decoder layers."""

from steerable import _deprecated
from steerable.architectures import ARCHITECTURES, SITES, ArchitectureSpec, register_architecture
from steerable.conditions import Condition
from steerable.handle import SteeringHandle
from steerable.model import SteerableModel
from steerable.operators import OPERATORS, Operator, register_operator
from steerable.per_request import RowSteering
from steerable.recording import Recording, record_activations
from steerable.spec import Steering
from steerable.train.condition_search import find_best_condition_point
from steerable.train.extraction import aggregate_activations, extract_activations, train_steering_vector
from steerable.train.learned import Completion, Preference, optimize_steering_vector
from steerable.train.pairs import ContrastivePair
from steerable.vectors import SteeringVector

__version__ = "0.2.0"

_deprecated.install()

__all__ = [
    "ARCHITECTURES",
    "OPERATORS",
    "SITES",
    "ArchitectureSpec",
    "Completion",
    "Condition",
    "RowSteering",
    "find_best_condition_point",
    "ContrastivePair",
    "Operator",
    "Preference",
    "Recording",
    "aggregate_activations",
    "extract_activations",
    "SteerableModel",
    "Steering",
    "SteeringHandle",
    "SteeringVector",
    "record_activations",
    "register_operator",
    "optimize_steering_vector",
    "register_architecture",
    "train_steering_vector",
]
