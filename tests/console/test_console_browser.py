"""The console in a real browser: Debian's Chromium, headless, driven by Playwright,
against a real ``provisiond serve`` with the example inventory, whose BMCs are the
project's IPMI simulators on loopback.

Screenshots of the overview, the rack and a machine page are saved as artifacts
(``build/test-artifacts/console``); README's pictures in docs/ are copies of them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlmodel import select

from provisiond.console.auth import COOKIE
from provisiond.db import Database
from provisiond.models import Allocation, ApiToken
from tests.support import browser, procs
from tests.support.daemon import Daemon, cli

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(r"listening on (?P<host>[\d.]+):(?P<first>\d+)-(?P<last>\d+)/udp")
BMC_PASSWORD = "console-test-pw"


@dataclass
class Console:
    daemon: Daemon
    operator: str
    ci: str
    chromium: Any

    @property
    def url(self) -> str:
        return self.daemon.url

    def page(self, token: str) -> Any:
        """A new browser context (its own cookies), signed in with ``token``."""
        context = self.chromium.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        browser.sign_in(page, self.url, token)
        return page


def _bmc_sims() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "provisiond", "sim", "bmc", "--count", "3", "--base-port", "0",
         "--password", BMC_PASSWORD, "--latency-ms", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        found = READY.search(line)
        if found:
            return proc, int(found["first"])
        if not line and proc.poll() is not None:
            break
    procs.stop(proc)
    raise AssertionError("the BMC simulators did not start")


def _inventory(path: Path, first_port: int) -> None:
    spec = yaml.safe_load((ROOT / "inventory" / "example.yaml").read_text())
    for i, machine in enumerate(spec["machines"]):
        machine["bmc"]["port"] = first_port + i
        machine["bmc"]["password_env"] = "CONSOLE_BMC_PW"
    path.write_text(yaml.safe_dump(spec))


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    browser.require()
    work = tmp_path_factory.mktemp("console")
    sims, first = _bmc_sims()
    daemon = Daemon(work / "data")
    try:
        daemon.prepare()
        daemon.start()
        inventory = work / "inventory.yaml"
        _inventory(inventory, first)
        env = {**daemon.env, "CONSOLE_BMC_PW": BMC_PASSWORD}
        applied = cli("inventory", "apply", str(inventory), env=env)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        tokens = {}
        for role in ("operator", "ci"):
            made = cli("token", "create", "--name", f"web-{role}", "--role", role, env=env)
            assert made.returncode == 0, made.stderr
            tokens[role] = made.stdout.strip().splitlines()[-1]
        with browser.browser() as chromium:
            yield Console(daemon, tokens["operator"], tokens["ci"], chromium)
    finally:
        daemon.stop()
        procs.stop(sims)


def _db(console: Console) -> Database:
    return Database(f"sqlite:///{console.daemon.data_dir / 'provisiond.db'}")


def test_sign_in_refuses_a_wrong_token_then_shows_the_overview(console: Console) -> None:
    context = console.chromium.new_context()
    page = context.new_page()
    page.goto(console.url + "/ui/")
    assert "/ui/signin" in page.url
    page.fill("#token", "pvd_wrong")
    page.click("#signin")
    assert "the token is not known" in page.inner_text("#signin-error")
    page.fill("#token", console.operator)
    page.click("#signin")
    page.wait_for_selector("#states")
    assert page.inner_text("#whoami") == "web-operator (operator)"
    assert console.operator not in page.content()
    assert console.operator not in page.url
    cookie = next(c for c in context.cookies() if c["name"] == COOKIE)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # HttpOnly: not readable by scripts
    browser.shot(page, "overview")
    context.close()


def test_the_rack_page_places_every_machine_in_its_u(console: Console) -> None:
    page = console.page(console.operator)
    page.goto(console.url + "/ui/racks/lab1")
    svg = page.locator('svg.elevation[data-rack="lab1"]')
    assert svg.get_attribute("data-u-height") == "42"
    placed = {
        g.get_attribute("data-name"): (g.get_attribute("data-u"), g.get_attribute("data-height"))
        for g in svg.locator("g.device").all()
    }
    spec = yaml.safe_load((ROOT / "inventory" / "example.yaml").read_text())
    for machine in spec["machines"]:
        assert placed[machine["name"]] == (str(machine["u_position"]), str(machine["u_height"]))
    for switch in spec["switches"]:
        assert placed[switch["name"]][0] == str(switch["u_position"])
    occupied = sum(int(h) for _, h in placed.values())
    assert svg.locator("rect.empty-u").count() == 42 - occupied
    browser.shot(page, "rack")
    page.context.close()


def test_power_cycle_from_the_machine_page_updates_another_tab_live(console: Console) -> None:
    watcher = console.page(console.operator)
    watcher.goto(console.url + "/ui/machines/vm1")
    watcher.wait_for_function("() => document.getElementById('live-dot').classList.contains('on')")
    before = watcher.locator("tr.event").count()
    actor = console.page(console.operator)
    actor.goto(console.url + "/ui/machines/vm1")
    actor.click("#action-power-cycle")
    assert "Power cycle vm1?" in actor.inner_text("#confirm")
    actor.click("#confirm-action")
    actor.wait_for_selector("#flash")
    flash = actor.inner_text("#flash")
    assert "Power cycle vm1" in flash and "failed" not in flash, flash
    # The watching tab was not reloaded: its <main> was swapped by the live stream.
    watcher.wait_for_function(
        f"() => document.querySelectorAll('tr.event').length > {before}", timeout=15000
    )
    assert watcher.get_attribute("body", "data-refreshed")
    assert "power" in watcher.inner_text("#events").lower()
    browser.shot(watcher, "machine")
    for page in (watcher, actor):
        page.context.close()


def _add_allocations(console: Console, owners: tuple[str, ...]) -> None:
    """Pending allocations owned by ``owners`` (token names), written to the daemon's DB."""
    db = _db(console)
    try:
        with db.transaction() as session:
            ids = {t.name: t.id for t in session.exec(select(ApiToken)).all() if t.id}
            for owner in owners:
                session.add(Allocation(owner_token_id=ids[owner], state="pending",
                                       constraints={"names": ["vm3"]}))  # fmt: skip
    finally:
        db.dispose()


def test_a_ci_token_sees_no_actions_and_only_its_own_allocations(console: Console) -> None:
    # Playwright's sync API runs an event loop on this thread: the DB work goes elsewhere.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(_add_allocations, console, ("admin", "web-ci")).result(timeout=30)
    page = console.page(console.ci)
    page.goto(console.url + "/ui/machines/vm1")
    assert page.locator("#action-power-cycle").count() == 0
    assert page.locator(".actions").count() == 0
    page.goto(console.url + "/ui/allocations")
    owners_shown = page.locator("#allocations tbody tr .owner").all_inner_texts()
    assert owners_shown == ["web-ci"], owners_shown
    # the action route itself refuses a ci session, whatever the page shows
    r = page.request.get(console.url + "/ui/machines/vm1/actions/power-off")
    assert r.status == 403
    page.context.close()


def test_sign_out_kills_the_cookie_and_forged_actions_are_refused(console: Console) -> None:
    page = console.page(console.operator)
    # A forged POST from the signed-in browser without the form token: refused.
    r = page.request.post(
        console.url + "/ui/machines/vm2/actions/power-off", form={"reason": "forged"}
    )
    assert r.status == 403
    assert "security token" in r.text()
    # Another site's page posting to the console (cross-site): SameSite=Strict keeps the
    # cookie away, and the Origin check refuses it even with a stolen form token.
    csrf = page.locator('input[name="csrf"]').first.get_attribute("value")
    r = page.request.post(
        console.url + "/ui/machines/vm2/actions/power-off",
        form={"csrf": csrf or ""},
        headers={"Origin": "http://evil.example"},
    )
    assert r.status == 403
    cookie = next(c for c in page.context.cookies() if c["name"] == COOKIE)
    page.click("#signout")
    page.wait_for_selector("#token")
    replay = console.chromium.new_context()
    replay.add_cookies([cookie])
    other = replay.new_page()
    other.goto(console.url + "/ui/machines/vm1")
    assert "/ui/signin" in other.url  # the old cookie no longer signs anyone in
    replay.close()
    page.context.close()
