"""Training: contrastive dual-encoder training (full, task adapter, MAD-X) and MLM language adapters."""

from clir.train.checkpoint import list_checkpoints
from clir.train.language_adapter import LanguageAdapterArgs, LanguageAdapterResult, train_language_adapter
from clir.train.optim import setup_trainable
from clir.train.plan import Plan, training_plan
from clir.train.trainer import TrainResult, train

__all__ = [
    "LanguageAdapterArgs",
    "LanguageAdapterResult",
    "Plan",
    "TrainResult",
    "list_checkpoints",
    "setup_trainable",
    "train",
    "train_language_adapter",
    "training_plan",
]
