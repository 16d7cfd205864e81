"""lesionlab: train and judge skin-lesion classifiers when malignant cases are rare."""

__version__ = "0.1.0"
