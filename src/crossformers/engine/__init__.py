"""Training, evaluation and prediction for crossformers models.

>>> from crossformers.engine import TrainConfig, train, evaluate, predict
>>> result = train(TrainConfig(model="fcaformer_nano", data="fashion-mnist", epochs=1, output="runs/nano"))
>>> metrics = evaluate("runs/nano", "fashion-mnist")
>>> predict("runs/nano", ["shoe.png"], topk=3)
"""
from .checkpoint_io import load_trained, read_meta, resolve_checkpoint_dir, save_checkpoint
from .config import TrainConfig
from .errors import (
    ConfigError,
    ImageReadError,
    ModelSpecError,
    NonFiniteLossError,
    OutputExistsError,
    PartialPredictionError,
    TrainingError,
)
from .evaluate import evaluate
from .loading import LoadedModel, load_model, model_in_chans
from .modeling import build_model, count_macs, count_params
from .predict import predict
from .train import train

__all__ = [
    "TrainConfig", "train", "evaluate", "predict", "load_trained", "save_checkpoint", "read_meta",
    "resolve_checkpoint_dir", "build_model", "count_params", "count_macs", "ConfigError", "ImageReadError",
    "NonFiniteLossError", "OutputExistsError", "TrainingError", "load_model", "LoadedModel", "model_in_chans",
    "ModelSpecError", "PartialPredictionError",
]
