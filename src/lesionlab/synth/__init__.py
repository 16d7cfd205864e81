"""Synthetic images: train a generator on the train pool (one class, or both for a class-conditional
one), sample, check quality and memorisation. Generators only: adding synthetic images to a training
draw (and the leak guard that protects the evaluation sets) lives with the other training-draw code in
data/."""
