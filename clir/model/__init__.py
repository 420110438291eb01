"""The dual encoder (backbone + adapters + language routing) and model-folder save/load."""

from clir.model.encoder import MODEL_FILE, DualEncoder, load_encoder

__all__ = ["MODEL_FILE", "DualEncoder", "load_encoder"]
