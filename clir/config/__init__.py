"""The one typed config schema (model, adapters, routing, ...) and its YAML loading."""

from clir.config.base import expand_env, from_dict, load_yaml, to_dict
from clir.config.eval import (
    AdapterBuildSpec,
    Bm25Config,
    BuildSpec,
    CollectionSpec,
    EvalConfig,
    FusionConfig,
    MlmHeadSpec,
    ModelSpec,
    SignificanceConfig,
)
from clir.config.model import AdapterArch, ModelConfig, Routing
from clir.config.train import CheckpointConfig, DataConfig, OptimConfig, TrainConfig, load_train_config

__all__ = [
    "AdapterArch",
    "AdapterBuildSpec",
    "MlmHeadSpec",
    "Bm25Config",
    "BuildSpec",
    "CheckpointConfig",
    "CollectionSpec",
    "DataConfig",
    "EvalConfig",
    "FusionConfig",
    "ModelConfig",
    "ModelSpec",
    "OptimConfig",
    "Routing",
    "SignificanceConfig",
    "TrainConfig",
    "expand_env",
    "from_dict",
    "load_train_config",
    "load_yaml",
    "to_dict",
]
