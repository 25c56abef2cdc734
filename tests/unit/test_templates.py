"""The template engine: most-specific-first look-up, strictness, and the sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisiond.templates import TemplateError, Templates, candidates


def test_candidates_go_from_most_to_least_specific() -> None:
    assert candidates("ipxe", "deploy", "x86_64") == ["ipxe/deploy.x86_64.j2", "ipxe/deploy.j2"]
    assert candidates("os", "user-data", "debian", "12") == [
        "os/user-data.debian.12.j2",
        "os/user-data.debian.j2",
        "os/user-data.j2",
    ]


def test_most_specific_wins_and_errors_are_clear(tmp_path: Path) -> None:
    (tmp_path / "ipxe").mkdir()
    (tmp_path / "ipxe" / "deploy.j2").write_text("generic {{ name }}\n")
    (tmp_path / "ipxe" / "deploy.x86_64.j2").write_text("x86 {{ name }}\n")
    (tmp_path / "ipxe" / "typo.j2").write_text("{{ nmae }}\n")
    (tmp_path / "ipxe" / "evil.j2").write_text("{{ name.__class__.__mro__[1].__subclasses__() }}\n")
    t = Templates(tmp_path)
    assert t.render_first(candidates("ipxe", "deploy", "x86_64"), name="n1") == "x86 n1\n"
    assert t.render_first(candidates("ipxe", "deploy", "aarch64"), name="n1") == "generic n1\n"
    with pytest.raises(TemplateError, match="unknown variable"):
        t.render("ipxe/typo.j2", name="n1")
    with pytest.raises(TemplateError, match="sandbox forbids"):
        t.render("ipxe/evil.j2", name="n1")
    with pytest.raises(TemplateError, match=r"looked for ipxe/nope\.j2"):
        t.render("ipxe/nope.j2")
