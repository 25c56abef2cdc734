"""One template engine for boot scripts, dnsmasq and OS configs: sandboxed and strict.

Templates live in ``pxe/`` (``templates_dir`` in the config). Look-ups go from the
most specific file to the least, e.g. ``ipxe/deploy.x86_64.j2`` before
``ipxe/deploy.j2``::

    templates = Templates(settings.templates_dir)
    script = templates.render_first(["ipxe/deploy.x86_64.j2", "ipxe/deploy.j2"], machine=m)

Jinja2's SandboxedEnvironment keeps templates from reaching Python internals, and
StrictUndefined turns a misspelt variable into an error instead of an empty string.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, TemplateNotFound, TemplateSyntaxError
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

from provisiond.errors import TemplateError as TemplateError  # re-exported

#: The templates shipped beside the package, used unless the config names another folder.
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "pxe"


def candidates(folder: str, name: str, *qualifiers: str) -> list[str]:
    """``candidates("ipxe", "deploy", "x86_64")`` -> most specific first."""
    names = []
    for i in range(len(qualifiers), -1, -1):
        names.append(".".join([name, *qualifiers[:i]]) + ".j2")
    return [f"{folder}/{n}" for n in names]


class Templates:
    def __init__(self, root: Path = DEFAULT_DIR) -> None:
        self.root = root
        self.env = SandboxedEnvironment(
            loader=FileSystemLoader(str(root)),
            undefined=StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def render(self, template: str, /, **context: Any) -> str:
        return self.render_first([template], **context)

    def render_first(self, names: Sequence[str], /, **context: Any) -> str:
        try:
            template = self.env.select_template(list(names))
        except TemplateNotFound:
            raise TemplateError(
                f"no template found; looked for {', '.join(names)} in {self.root}",
                hint="add one of those files, or point templates_dir at the right folder",
            ) from None
        except TemplateSyntaxError as exc:
            raise TemplateError(
                f"template {exc.filename or exc.name}:{exc.lineno} has a syntax error: {exc}",
                hint="fix the template; nothing was rendered",
            ) from None
        try:
            return template.render(**context)
        except UndefinedError as exc:
            raise TemplateError(
                f"template {template.name} uses an unknown variable: {exc}",
                hint="fix the variable name; templates are strict so typos never render blank",
            ) from None
        except SecurityError as exc:
            raise TemplateError(
                f"template {template.name} tried something the sandbox forbids: {exc}",
                hint="templates may only format the values they are given",
            ) from None
