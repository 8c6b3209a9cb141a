"""The report's building blocks (headings, tables, ...) and how numbers are written in
them: the report is built as a list of blocks, then rendered to Markdown and HTML."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence, Union


@dataclasses.dataclass(frozen=True)
class Heading:
  level: int
  text: str


@dataclasses.dataclass(frozen=True)
class Paragraph:
  text: str


@dataclasses.dataclass(frozen=True)
class Definitions:
  """A bulleted list of (term, text) pairs; the term is shown in bold."""
  items: Sequence[tuple[str, str]]


@dataclasses.dataclass(frozen=True)
class Table:
  header: Sequence[str]
  rows: Sequence[Sequence[str]]


@dataclasses.dataclass(frozen=True)
class Image:
  name: str  # file name under PLOTS_DIR, without ".png"
  caption: str


@dataclasses.dataclass(frozen=True)
class Collapsed:
  """Preformatted text hidden behind a summary line (the config)."""
  summary: str
  text: str


Block = Union[Heading, Paragraph, Definitions, Table, Image, Collapsed]


def finite(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def number(value: Any, digits: int = 3) -> str:
  if isinstance(value, bool):
    return str(value).lower()
  return f"{value:.{digits}f}" if finite(value) else "n/a"


