"""YAML text of Prometheus rule groups, with comments, the way a person would write it.

``yaml.safe_dump`` loses comments and quotes PromQL in ways nobody reads; the rule
files are meant to be read on call, so they are written here instead: multi-line
expressions as literal blocks (``|``), descriptions folded (``>-``), the other
annotations double-quoted, and the comments a :class:`Rule` carries written above
or inside it.  :func:`dump_groups` checks its own output: the text must load back
(with ``yaml.safe_load``) to exactly the groups' data, so a value the writer does
not know how to spell fails here instead of reaching Prometheus changed.

Rules may also be plain mappings (the SLO groups of :mod:`.slo` are): their keys
are written in order with the same spelling rules, without comments.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

__all__ = ["Group", "Rule", "dump_groups", "groups_data", "scalar"]

#: Width that folded descriptions are wrapped at (content only, before indentation).
WRAP = 78


@dataclass(frozen=True)
class Rule:
    """One recording (``record``) or alerting (``alert``) rule and its comments.

    ``section`` is a heading written above the rule after a blank line; ``comment``
    explains the rule: above a recording rule, under an alert's name.
    """

    expr: str
    record: str | None = None
    alert: str | None = None
    for_: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    section: str = ""
    comment: str = ""

    def data(self) -> dict[str, Any]:
        """The rule as Prometheus reads it (no comments)."""
        out: dict[str, Any] = {}
        if self.record is not None:
            out["record"] = self.record
        if self.alert is not None:
            out["alert"] = self.alert
        out["expr"] = self.expr
        if self.for_ is not None:
            out["for"] = self.for_
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True)
class Group:
    """A rule group: its name, its rules (:class:`Rule` or plain mappings)."""

    name: str
    rules: Sequence[Rule | Mapping[str, Any]]
    interval: str | None = None

    def data(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.interval is not None:
            out["interval"] = self.interval
        out["rules"] = [r.data() if isinstance(r, Rule) else dict(r) for r in self.rules]
        return out


def groups_data(groups: Sequence[Group | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The groups as plain data, the form of a rule file's ``groups:`` or a manifest's."""
    return [g.data() if isinstance(g, Group) else _plain(g) for g in groups]


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def dump_groups(
    groups: Sequence[Group | Mapping[str, Any]], header: str = "", indent: int = 0
) -> str:
    """``groups:`` and the groups under it as YAML text, preceded by ``header`` as comments.

    ``indent`` shifts everything right (a manifest's ``spec:`` holds the same text).

    Raises:
        ValueError: the text would not load back to the groups' data (a bug here).
    """
    pad = " " * indent
    lines = [f"{pad}# {line}".rstrip() for line in header.splitlines()] if header else []
    lines.append(f"{pad}groups:")
    for group in groups:
        lines += _group(group, indent + 2)
    text = "\n".join(lines) + "\n"
    loaded = yaml.safe_load(text)
    if indent:
        loaded = {"groups": loaded["groups"]} if loaded else loaded
    expected = {"groups": groups_data(groups)}
    if loaded != expected:
        raise ValueError("rule YAML does not load back to its data:\n" + text)
    return text


def _group(group: Group | Mapping[str, Any], indent: int) -> list[str]:
    pad = " " * indent
    data = group.data() if isinstance(group, Group) else dict(group)
    rules = list(group.rules) if isinstance(group, Group) else list(data["rules"])
    lines = [f"{pad}- name: {scalar(data['name'])}"]
    # Other group keys (interval, limit, query_offset...) in their order, before the rules.
    for key, value in data.items():
        if key not in ("name", "rules"):
            lines += _entry(f"{pad}  ", key, value, indent + 2)
    lines.append(f"{pad}  rules:")
    alerts = any(isinstance(r, Rule) and r.alert for r in rules)
    for index, rule in enumerate(rules):
        body = _rule(rule, indent + 4)
        section = rule.section if isinstance(rule, Rule) else ""
        if index and (section or alerts):
            lines.append("")
        if section:
            lines.append(f"{pad}    # {section}")
        lines += body
    return lines


def _rule(rule: Rule | Mapping[str, Any], indent: int) -> list[str]:
    pad = " " * indent
    data = rule.data() if isinstance(rule, Rule) else dict(rule)
    comment = rule.comment if isinstance(rule, Rule) else ""
    notes = [f"{pad}  # {line}".rstrip() for line in comment.splitlines()]
    lines: list[str] = []
    if notes and "record" in data:
        lines += [n.replace("  # ", "# ", 1) for n in notes]
        notes = []
    for index, (key, value) in enumerate(data.items()):
        lead = f"{pad}- " if index == 0 else f"{pad}  "
        lines += _entry(lead, key, value, indent + 2)
        if index == 0:
            lines += notes
    return lines


def _entry(lead: str, key: str, value: Any, indent: int) -> list[str]:
    """``key: value`` at ``lead``; nested mappings and blocks indented under it."""
    pad = " " * indent
    if isinstance(value, Mapping):
        lines = [f"{lead}{key}:"]
        for k, v in value.items():
            lines += _entry(pad + "  ", str(k), v, indent + 2)
        return lines
    if (isinstance(value, str) and "\n" in value.rstrip("\n")) or (
        isinstance(value, str) and value.endswith("\n")
    ):
        return _literal(lead, key, value, indent)
    if key == "description" and isinstance(value, str) and _foldable(value):
        wrapped = _wrap(value)
        return [f"{lead}{key}: >-", *(f"{pad}  {line}" for line in wrapped)]
    if key in ("summary", "description", "runbook") or key.startswith("runbook"):
        return [f"{lead}{key}: {_quoted(value)}"]
    return [f"{lead}{key}: {scalar(value)}"]


def _literal(lead: str, key: str, value: str, indent: int) -> list[str]:
    pad = " " * indent
    body = value[:-1] if value.endswith("\n") else value
    if body.startswith((" ", "\n")) or value.endswith("\n\n") or "\t" in value:
        return [f"{lead}{key}: {_quoted(value)}"]
    chomp = "" if value.endswith("\n") else "-"
    return [f"{lead}{key}: |{chomp}", *(f"{pad}  {line}".rstrip() for line in body.split("\n"))]


def _wrap(text: str) -> list[str]:
    """Lines of at most :data:`WRAP` characters; a ``{{ template }}`` is never split."""
    words = re.findall(r"\{\{.*?\}\}\S*|\S+", text)
    lines: list[str] = []
    line = ""
    for word in words:
        if line and len(line) + 1 + len(word) > WRAP:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [*lines, line] if line else lines


def _foldable(value: str) -> bool:
    # Folding joins wrapped lines with one space: only text without runs of
    # spaces, leading or trailing space survives it unchanged.
    return value == value.strip() and "  " not in value and "\n" not in value and len(value) > WRAP


def _quoted(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else scalar(value)


_PLAIN_UNSAFE = re.compile(r"^[-?:,\[\]{}#&*!|>'\"%@`\s]|: | #|:$|\s$")


def scalar(value: Any) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, (int, float)):
        return json.dumps(value)
    if not isinstance(value, str):
        raise ValueError(f"cannot write {value!r} in a rule file")
    if value and not _PLAIN_UNSAFE.search(value) and yaml.safe_load(f"k: {value}") == {"k": value}:
        return value
    return _quoted(value)
