"""train.py's pipeline: options and presets (`sid.run.arguments`), the run directory as a
transaction (`sid.run.rundir`) and the stages that fill it (`sid.run.stages`).

Names are imported lazily, so that `sid.evaluation` can read `sid.run.rundir` without pulling
in the training pipeline."""

_EXPORTS = {
    "ARGUMENT_CLASSES": "sid.run.arguments",
    "PRESETS": "sid.run.arguments",
    "arguments_from_dict": "sid.run.arguments",
    "run_training": "sid.run.stages",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sid.run' has no attribute {name!r}")


__all__ = list(_EXPORTS)
