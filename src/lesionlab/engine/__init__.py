"""Training and inference on prepared uint8 images."""
