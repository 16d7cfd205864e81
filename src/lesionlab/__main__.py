"""`python -m lesionlab ...` (what torchrun launches on every node)."""
from .cli import main

main()
