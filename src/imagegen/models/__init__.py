"""Image engines: the port a model implements and the simulated models that ship."""

from imagegen.models.base import ImageModel, ModelFailure
from imagegen.models.simulated import SimulatedModel, draw_png

__all__ = ["ImageModel", "ModelFailure", "SimulatedModel", "draw_png"]
