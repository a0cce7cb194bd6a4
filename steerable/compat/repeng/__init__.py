"""repeng's API on steerable's engine: change ``import repeng`` / ``from repeng import ...`` to
``steerable.compat.repeng`` and keep the code (``ControlVector.train``, arithmetic, GGUF export and
import, ``ControlModel.set_control`` / ``reset``)."""

from steerable.compat.repeng.control import ControlModel
from steerable.compat.repeng.extract import ControlVector, DatasetEntry, read_representations

__all__ = ["ControlModel", "ControlVector", "DatasetEntry", "read_representations"]
