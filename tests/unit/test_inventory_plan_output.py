"""How ``provisiond inventory apply`` prints a plan: a table, or plain lines when long."""

from __future__ import annotations

from typing import Any

import pytest

from provisiond.cli import inventory as cli_inventory


def _plan(changes: list[dict[str, Any]]) -> dict[str, Any]:
    summary = {a: sum(c["action"] == a for c in changes) for a in cli_inventory._STYLE}
    return {"changes": changes, "summary": summary, "applied": True}


def test_a_long_plan_prints_aligned_literal_lines(capsys: pytest.CaptureFixture[str]) -> None:
    changes = [
        {"action": "create", "kind": "machine", "name": f"r1-n{i}", "line": 10 + i, "fields": {}}
        for i in range(cli_inventory.TABLE_ROWS + 1)
    ]
    changes += [
        {
            "action": "update",
            "kind": "rack",
            "name": "r1",
            "line": 2,
            "fields": {"site": {"from": "a\x1b[31m", "to": "b"}},
        },
        {"action": "unchanged", "kind": "rack", "name": "r2", "line": 3, "fields": {}},
        {"action": "delete", "kind": "pdu", "name": "p9", "line": None, "fields": {}},
    ]
    cli_inventory._print_plan(_plan(changes))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["action", "kind", "name", "line", "fields"]
    assert lines[1] == "create  machine  r1-n0    10"
    assert len(lines) == 1 + len(changes) - 1 + 1  # header, all but the unchanged, summary
    assert "update  rack     r1       2     site a\\x1b[31m -> b" in lines
    assert "delete  pdu      p9" in lines
    assert "\x1b" not in "\n".join(lines)
    assert lines[-1] == "201 to create, 1 to update, 1 unchanged, 1 to delete (applied)"


def test_a_short_plan_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    change = {"action": "create", "kind": "rack", "name": "r1", "line": 2, "fields": {}}
    cli_inventory._print_plan(_plan([change]))
    out = capsys.readouterr().out
    assert "┃ action ┃ kind ┃ name ┃ line ┃ fields ┃" in out
    assert "│ create │ rack │ r1   │ 2    │        │" in out and out.endswith(
        "1 to create, 0 to update, 0 unchanged, 0 to delete (applied)\n"
    )
