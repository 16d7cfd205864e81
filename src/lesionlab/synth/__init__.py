"""Synthetic images of one class: train a generator on the train pool, sample, check quality and
memorisation, and guard evaluation sets against leaks."""
