"""`python -m lesionlab ...` (what torchrun launches on every node, and cv, tune and sweep --workers
start on this machine)."""
import os

from .data.parallel import PARENT_ENV, exit_with_parent

parent = os.environ.pop(PARENT_ENV, None)
if parent:  # a local worker of cv, tune or sweep --workers: it ends with the command that started it
    exit_with_parent(int(parent))

from .cli import main  # noqa: E402 - after the parent watch, so that a worker is never left unwatched

main()
