"""train.py's pipeline: options and presets (`arguments`), the run directory as a transaction
(`rundir`) and the stages that fill it (`stages`)."""

from sid.run.arguments import ARGUMENT_CLASSES, PRESETS, arguments_from_dict
from sid.run.stages import run_training

__all__ = ["ARGUMENT_CLASSES", "PRESETS", "arguments_from_dict", "run_training"]
