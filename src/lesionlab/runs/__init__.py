"""The run folder: one owner for its format (format.py), its writing (writer.py), its reading
(reader.py) and scoring new images with it (predictor.py)."""
from .format import FORMAT_VERSION, KINDS
from .predictor import ModelPredictor, Predictor, load_predictor
from .reader import Run, find_runs, is_complete_run, load_run, oof_arrays, read_table
from .writer import RunWriter, check_new_run_folder, model_checkpoint

__all__ = ["FORMAT_VERSION", "KINDS", "ModelPredictor", "Predictor", "Run", "RunWriter", "check_new_run_folder",
           "find_runs", "is_complete_run", "load_predictor", "load_run", "model_checkpoint", "oof_arrays", "read_table"]
