"""The one typed config schema (model, adapters, routing, ...) and its YAML loading."""

from clir.config.base import expand_env, from_dict, load_yaml, to_dict
from clir.config.model import AdapterArch, ModelConfig, Routing

__all__ = ["AdapterArch", "ModelConfig", "Routing", "expand_env", "from_dict", "load_yaml", "to_dict"]
