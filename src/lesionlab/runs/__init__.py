"""The run folder: one owner for its format (format.py), its kinds (kinds.py, each declared where it
lives), its writing (writer.py), its reading (reader.py) and scoring new images with it (predictor.py)."""
from .format import FORMAT_VERSION
from .kinds import RunKind, find_kind, kind_names, register_kind, run_kind
from .predictor import ModelPredictor, Predictor, load_predictor
from .reader import Run, find_runs, is_complete_run, load_run, oof_arrays, read_table
from .writer import RunWriter, check_new_run_folder, model_checkpoint

__all__ = ["FORMAT_VERSION", "ModelPredictor", "Predictor", "Run", "RunKind", "RunWriter", "check_new_run_folder",
           "find_kind", "find_runs", "is_complete_run", "kind_names", "load_predictor", "load_run", "model_checkpoint",
           "oof_arrays", "read_table", "register_kind", "run_kind"]
