"""The one typed config schema (model, adapters, routing, ...) and its YAML loading; the verbs' requests."""

from clir.config.base import expand_env, from_dict, load_yaml, to_dict
from clir.config.build_flags import request_from_flags
from clir.config.experiment import (
    AdapterBuildSpec,
    Bm25Config,
    BuildSpec,
    CollectionSpec,
    ExperimentConfig,
    FusionConfig,
    MlmHeadSpec,
    ModelSpec,
    SignificanceConfig,
)
from clir.config.model import AdapterArch, ModelConfig, Routing
from clir.config.requests import (
    DevSettings,
    EvaluateRequest,
    ExperimentRequest,
    IndexRequest,
    LanguageAdapterRequest,
    MlmHeadRequest,
    PassageSpec,
    RayRequest,
    SearchRequest,
    ServeRequest,
    ServeSettings,
    TrainRequest,
)
from clir.config.train import CheckpointConfig, DataConfig, OptimConfig, TrainConfig, load_train_config

#: the old name of ExperimentConfig ("eval" now names only the eval/ folder), kept for callers
EvalConfig = ExperimentConfig

__all__ = [
    "AdapterArch",
    "AdapterBuildSpec",
    "Bm25Config",
    "BuildSpec",
    "CheckpointConfig",
    "CollectionSpec",
    "DataConfig",
    "DevSettings",
    "EvalConfig",
    "ExperimentConfig",
    "EvaluateRequest",
    "ExperimentRequest",
    "FusionConfig",
    "IndexRequest",
    "LanguageAdapterRequest",
    "MlmHeadRequest",
    "MlmHeadSpec",
    "ModelConfig",
    "ModelSpec",
    "OptimConfig",
    "PassageSpec",
    "RayRequest",
    "Routing",
    "SearchRequest",
    "ServeRequest",
    "ServeSettings",
    "SignificanceConfig",
    "TrainConfig",
    "TrainRequest",
    "expand_env",
    "from_dict",
    "load_train_config",
    "load_yaml",
    "request_from_flags",
    "to_dict",
]
