"""The registry of run kinds: each kind is declared where it lives, beside its predictor loader (as
timm's models register themselves), and every reader asks here what a kind holds and scores.

    register_kind(RunKind("tabular", takes="rows", loader=load_tabular_predictor, files=(...)))

The core kinds (train, cv, ensemble in predictor.py, encoder in encoder_run.py) and the packages built
on the run format (tabular/) register themselves on import. runs/ imports none of those packages:
a folder of a kind not registered yet (its package not imported in this process) makes the first
look-up import the modules named in KIND_MODULES, by name, once."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal

from . import format as fmt

if TYPE_CHECKING:
    from .reader import Run

# the modules that declare run kinds; a new kind's module is added here so that its folders load
# in a process that has not imported it
KIND_MODULES = ("lesionlab.runs.predictor", "lesionlab.runs.encoder_run", "lesionlab.tabular.predictor")

Takes = Literal["images", "rows"]


@dataclass(frozen=True)
class RunKind:
    """What a kind of run folder holds and how it scores.

    takes: what its predictor scores, "images" or "rows" (a table of metadata; a rows kind fused
    with an image model records that model in run.json's "image" block); None: it scores nothing.
    loader: (run, device) -> its predictor; None when it scores nothing.
    files: what a complete folder holds beyond config.yaml, run.json and metrics.json.
    report_figures: keys of format.FIGURES the report shows for it, in order.
    fold_hash: where run.json keeps the fingerprint of the fold assignment behind its oof.csv.
    group_keys: the run.json keys that name the split's group column, first found wins."""

    name: str
    takes: Takes | None
    loader: Callable[[Run, str], Any] | None  # an image kind's gives a predictor.Predictor, a rows kind's its own
    files: tuple[str, ...] = ()
    report_figures: tuple[str, ...] = ()
    fold_hash: tuple[str, ...] = ("fold_sha256",)
    group_keys: tuple[str, ...] = ("group_rule",)

    @property
    def has_oof(self) -> bool:
        """Its folder holds out-of-fold predictions of the train pool (oof.csv)."""
        return fmt.OOF in self.files


_REGISTRY: dict[str, RunKind] = {}
_imported_all = False


def register_kind(kind: RunKind) -> RunKind:
    """Declare a kind (once per name: a second, different declaration is a programming error)."""
    known = _REGISTRY.get(kind.name)
    if known is not None and known != kind:
        raise ValueError(f"run kind '{kind.name}' is declared twice")
    if kind.takes is not None and kind.loader is None:
        raise ValueError(f"run kind '{kind.name}' takes {kind.takes} but has no predictor loader")
    _REGISTRY[kind.name] = kind
    return kind


def _import_kind_modules() -> None:
    global _imported_all
    if not _imported_all:
        for name in KIND_MODULES:
            importlib.import_module(name)
        _imported_all = True


def find_kind(name: str) -> RunKind | None:
    """The kind called `name`, or None when no module declares it."""
    if name not in _REGISTRY:
        _import_kind_modules()
    return _REGISTRY.get(name)


def run_kind(name: str) -> RunKind:
    """The kind called `name`; a name no module declares is a programming error (readers of folders
    use find_kind and say which folder)."""
    kind = find_kind(name)
    if kind is None:
        raise ValueError(f"unknown run kind '{name}'; known: {', '.join(kind_names())}")
    return kind


def kind_names() -> tuple[str, ...]:
    """Every declared kind, in the order declared."""
    _import_kind_modules()
    return tuple(_REGISTRY)


def scoring_kind_names() -> tuple[str, ...]:
    """The kinds whose folders score something (predict takes them)."""
    return tuple(n for n in kind_names() if _REGISTRY[n].loader is not None)
