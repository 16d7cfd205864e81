"""Synthetic images of one class: train a generator on the train pool, sample, check quality and
memorisation. Generators only: adding synthetic images to a training draw (and the leak guard
that protects the evaluation sets) lives with the other training-draw code in data/."""
