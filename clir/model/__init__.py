"""The dual encoder (backbone + adapters + language routing) and model-folder save/load."""

from clir.model.encoder import DualEncoder, load_encoder
from clir.model.resolve import MODEL_FILE

__all__ = ["MODEL_FILE", "DualEncoder", "load_encoder"]
