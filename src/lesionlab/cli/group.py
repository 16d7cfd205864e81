"""The `lesionlab` group: the only place that prints errors, each as one line with exit status 2."""
from __future__ import annotations

import logging
import sys

import click

from .. import __version__
from ..errors import LesionLabError


def _fail(e: Exception) -> None:
    click.echo(f"error: {e}", err=True)
    sys.exit(2)


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LesionLabError as e:
            _fail(e)
        except OSError as e:
            # a read-only or full filesystem met anywhere (not only in fileio's write helpers, which
            # say so themselves): these errors can only come from writing, so they name where
            from ..fileio import WRITE_ONLY_ERRNOS, unwritable

            err = unwritable(e) if e.errno in WRITE_ONLY_ERRNOS else None
            if err is None:
                raise
            _fail(err)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="lesionlab")
@click.option("-v", "--verbose", is_flag=True, help="log what the library does")
def main(verbose: bool) -> None:
    """Train and judge skin-lesion classifiers when malignant cases are rare."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
