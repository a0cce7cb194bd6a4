"""steerable: steering vectors for Hugging Face transformers, inline in the decoder layers."""

from steerable.architectures import ARCHITECTURES, SITES, ArchitectureSpec, register_architecture
from steerable.conditions import Condition, find_best_condition_point
from steerable.learned import Completion, Preference, optimize_steering_vector
from steerable.model import SteerableModel
from steerable.operators import OPERATORS, Operator, register_operator
from steerable.per_request import RowSteering
from steerable.recording import Recording, record_activations
from steerable.steering import SteeringHandle
from steerable.training import ContrastivePair, aggregate_activations, extract_activations, train_steering_vector
from steerable.vectors import SteeringVector

__version__ = "0.1.0"

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
    "SteeringHandle",
    "SteeringVector",
    "record_activations",
    "register_operator",
    "optimize_steering_vector",
    "register_architecture",
    "train_steering_vector",
]
