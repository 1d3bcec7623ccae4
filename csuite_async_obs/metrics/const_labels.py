"""Constant labels, split once into names and values for every collector."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .catalog import SPECS

__all__ = ["ConstLabels"]


@dataclass(frozen=True)
class ConstLabels:
    """``CSUITE_CONST_LABELS`` as the names and values every series appends."""

    names: tuple[str, ...] = ()
    values: tuple[str, ...] = ()

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]]) -> ConstLabels:
        pairs = tuple(pairs)
        return cls(tuple(k for k, _ in pairs), tuple(v for _, v in pairs))

    def label_names(self, metric: str) -> list[str]:
        """The label names of catalog metric ``metric``, constant labels last."""
        return [*SPECS[metric].labels, *self.names]

    def with_values(self, *values: str) -> list[str]:
        """``values`` followed by the constant labels' values."""
        return [*values, *self.values]
