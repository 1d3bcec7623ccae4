"""The README's first two commands and reference tables match the code."""

from __future__ import annotations

import re

from csuite_async_obs.cli.reference import metrics_table, options_table

from .support import ROOT

README = (ROOT / "README.md").read_text()


def test_tables_are_generated_from_the_code() -> None:
    assert options_table() in README, "run: csuite-async-obs options --markdown"
    assert metrics_table() in README, "run: csuite-async-obs metrics --markdown"


def test_first_two_commands_are_demo_then_tests() -> None:
    block = re.search(r"```sh\n(.*?)```", README, re.S)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]
    assert commands[:2] == ["./scripts/demo", "./scripts/test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test" in ci
