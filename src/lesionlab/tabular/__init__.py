"""Tabular models on the metadata columns, optionally fused with an image model's scores.

features.py    column kinds, the ISIC 2024 recipe, patient context, image-score features
column_guard.py  which columns may be features (label-derived ones are refused)
engines.py     LightGBM (default), XGBoost and CatBoost behind one interface
model.py       grouped stratified folds, inner early stopping, negative undersampling
image.py       out-of-fold image scores from a cv (or ensemble) run folder
fusion.py      late fusion (rank average) and grouped paired bootstrap
predictor.py   a tabular run folder scoring new rows
command.py     `lesionlab tabular`: fit, evaluate and write a tabular run folder
"""
