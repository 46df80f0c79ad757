"""Controls are one registry: a new control is one registered function, seen everywhere."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from qkscore.cli import app
from qkscore.data import Item, controls
from qkscore.data.controls import control_items, control_names, controls_help, register_control

ITEMS = [Item(f"i{n}", f"Context {n}.", f"Statement {n}.", "True") for n in range(4)]


def test_builtin_controls_in_order_with_their_descriptions():
    assert control_names() == ("context-ablated", "context-swapped")
    text = controls_help()
    assert "context-ablated: the context removed" in text
    assert "context-swapped: each statement under another item's context" in text


def test_a_registered_control_is_scanned_named_and_applied(monkeypatch):
    monkeypatch.setattr(controls, "_CONTROLS", dict(controls._CONTROLS))

    @register_control("statement-upper", "the statement in capitals")
    def upper(items):
        return [Item(it.id, it.context, it.statement.upper(), it.label) for it in items]

    assert control_names()[-1] == "statement-upper"
    assert [it.statement for it in control_items(ITEMS, "statement-upper")][0] == "STATEMENT 0."
    assert "statement-upper: the statement in capitals" in controls_help()
    with pytest.raises(ValueError, match="already registered"):
        register_control("statement-upper", "again")(upper)


def test_unknown_control_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown control 'nope'; choose from context-ablated"):
        control_items(ITEMS, "nope")


def test_scan_help_lists_every_control():
    result = CliRunner().invoke(app, ["scan", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    for name in control_names():
        assert name in flat
