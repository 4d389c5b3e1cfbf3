"""The gateway's web page in a real browser: Playwright driving Debian's Chromium headless
against the gateway, a real broker, the real control plane and simulated PCs.

Screenshots are saved under ``artifacts/page/`` (or ``$IDLECLOUD_ARTIFACTS/page``).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from bus.sdk import App, Worker
from idlecloud.dev.services import ensure_chromium

from .control_plane import SLEEPER
from .gateway_rig import Api, Rig, deployment

CHROMIUM_FLAGS = ("--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-quic")  # fmt: skip
ARTIFACTS = Path(os.environ.get("IDLECLOUD_ARTIFACTS", Path(__file__).parents[1] / "artifacts"))
LIVE_S = 30_000  # ms: how long the page may take to show what the platform did


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium (installed if missing), headless, driven by Playwright."""
    executable = await asyncio.to_thread(ensure_chromium)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, headless=True,
                                                    args=list(CHROMIUM_FLAGS))  # fmt: skip
        yield launched
        await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    opened = await context.new_page()
    yield opened
    await context.close()


async def snapshot(page: Page, name: str) -> None:
    folder = ARTIFACTS / "page"
    folder.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


async def log_in(page: Page, base: str, key: str) -> None:
    await page.goto(base + "/")
    await page.get_by_label("Your API key").fill(key)
    await page.get_by_role("button", name="Log in").click()


async def fill_deploy(page: Page, app: str, replicas: str, cpu: str = "1000") -> None:
    form = page.locator("#deploy-form")
    await form.get_by_label("ID").fill(app)
    await form.get_by_label("Image").fill("local")
    await form.get_by_label("Command").fill(shlex.join(SLEEPER))
    await form.get_by_label("Replicas").fill(replicas)
    await form.get_by_label("CPU (millicores)").fill(cpu)
    await form.get_by_label("Memory (MiB)").fill("64")
    await form.get_by_role("button", name="Deploy").click()


async def test_alice_deploys_from_the_page_and_watches_it_run_and_never_sees_bob(
    rig: Rig,
    page: Page,
) -> None:
    await log_in(page, rig.base, rig.mint("user", "alice", ttl_s=60, now=0))
    await expect(page.locator("#login-error")).to_contain_text("expired")
    await log_in(page, rig.base, rig.mint("user", "alice"))
    await expect(page.locator("#who-name")).to_have_text("user alice")
    await expect(page.locator("#live")).to_have_text("live", timeout=LIVE_S)

    # Mistakes are named next to their fields, before anything is sent.
    await fill_deploy(page, "Not_A_Label", "-1")
    await expect(page.locator("#e-app")).to_contain_text("DNS label")
    await expect(page.locator("#e-replicas")).to_contain_text("between 0 and 10000")
    await snapshot(page, "1-field-errors")

    await fill_deploy(page, "spin", "2")
    await expect(page.locator("#deploy-message")).to_have_text("spin: 2 replicas admitted")
    await expect(page.locator("#e-app")).to_have_text("")
    row = page.locator('tr[data-app="spin"]')
    await expect(row.locator(".running")).to_have_text("2/2", timeout=LIVE_S)
    await expect(row).to_contain_text("running")
    await expect(page.locator('[data-resource="CPU"]')).to_contain_text(
        "2000 of 3000 millicores reserved"
    )
    await snapshot(page, "2-running")

    await fill_deploy(page, "big", "3")
    await expect(page.locator("#deploy-message")).to_contain_text("its quota is 3000m CPU")
    await snapshot(page, "3-quota-refused")

    async with aiohttp.ClientSession() as http:  # bob deploys while alice watches
        bob = Api(http, rig.base, rig.mint("user", "bob"))
        status, _body = await bob.call("POST", "/v1/namespaces/bob/deployments",
                                       deployment("bob-app", 1))  # fmt: skip
        assert status == 201

        async def bob_running() -> bool:
            _status, view = await bob.call("GET", "/v1/namespaces/bob/deployments/bob-app")
            return int(view["running"]) == 1

        for _ in range(150):
            if await bob_running():
                break
            await page.wait_for_timeout(200)
        assert await bob_running()
    # Bob's replica reserves CPU on a PC alice can see; his app itself never shows.
    cells = page.locator("tr[data-pc] td:nth-child(3) .small")
    for _ in range(150):
        if sum(int(text.split()[0]) for text in await cells.all_inner_texts()) == 3000:
            break
        await page.wait_for_timeout(200)
    assert sum(int(text.split()[0]) for text in await cells.all_inner_texts()) == 3000
    assert "bob-app" not in await page.content()
    assert await page.locator("tr[data-app]").count() == 1

    # A person sits down at a PC: the PCs view says so without a reload.
    pc = rig.plane.pcs[0].name
    rig.plane.simulation.login(pc)
    await expect(page.locator(f'tr[data-pc="{pc}"] .pc-state')).to_contain_text(
        "busy", timeout=LIVE_S
    )
    await snapshot(page, "4-a-person-at-a-pc")
    rig.plane.simulation.logout(pc)

    await page.get_by_role("button", name="Log out").click()
    await expect(page.get_by_label("Your API key")).to_be_visible()


async def test_a_cookie_alone_cannot_change_anything(rig: Rig) -> None:
    """A forged cross-site request carries the cookie but not the page's header."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        key = rig.mint("user", "alice")
        async with http.post(f"{rig.base}/v1/session", json={"api_key": key}) as r:
            assert r.status == 200 and r.cookies["idlecloud_session"]["httponly"]
            assert r.cookies["idlecloud_session"]["samesite"] == "Strict"
            assert "default-src 'self'" in r.headers["Content-Security-Policy"]
        url = f"{rig.base}/v1/namespaces/alice/deployments"
        async with http.get(url) as r:
            assert r.status == 200
        async with http.post(url, json=deployment("forged", 1)) as r:
            assert r.status == 403 and "X-Idlecloud-Page" in (await r.json())["error"]
        async with http.post(url, json=deployment("mine", 1),
                             headers={"X-Idlecloud-Page": "1"}) as r:  # fmt: skip
            assert r.status == 201
        node_key = rig.mint("node", "edge")
        async with http.post(f"{rig.base}/v1/session", json={"api_key": node_key}) as r:
            assert r.status == 403 and "cannot log in" in (await r.json())["error"]


async def test_an_admin_chooses_whose_apps_to_see(rig: Rig, page: Page) -> None:
    """Admins see every namespace: the page asks which one."""
    assert (await rig.plane.deploy("bob", "bobs-app", 1)).accepted
    await log_in(page, rig.base, rig.mint("admin", "root"))
    await expect(page.locator("#who-name")).to_have_text("admin root")
    chooser = page.get_by_role("textbox", name="namespace")
    await expect(chooser).to_be_visible()
    await expect(page.locator("#deploy")).to_be_hidden()  # no namespace chosen yet
    await expect(page.locator("tr[data-pc]")).to_have_count(len(rig.plane.pcs))
    await chooser.fill("bob")
    await chooser.press("Enter")
    await expect(page.locator('tr[data-app="bobs-app"]')).to_be_visible(timeout=LIVE_S)
    await expect(page.locator("#quota-ns")).to_have_text("bob")
    await snapshot(page, "5-an-admin-looks-at-bob")


async def test_the_page_shows_a_jobs_progress_and_cancels_it(
    rig: Rig, page: Page, unique: str
) -> None:
    """A job submitted over HTTP shows on Alice's page with its progress, which moves while
    a worker runs it; Cancel on another job cancels it. Bob's page shows none of hers."""
    app = App("alice", f"pg{unique}")

    @app.task
    async def square(x: int) -> int:
        await asyncio.sleep(0.01)
        return x * x

    key = rig.mint("user", "alice")
    async with aiohttp.ClientSession() as http:
        alice = Api(http, rig.base, key)
        body = {"app": app.app, "task": "square", "name": "page-run",
                "inputs": [[x] for x in range(200)]}  # fmt: skip
        status, first = await alice.call("POST", "/v1/namespaces/alice/jobs", body)
        assert status == 201, first
        status, second = await alice.call("POST", "/v1/namespaces/alice/jobs",
                                          {**body, "name": "to-cancel"})  # fmt: skip
        assert status == 201, second
    await log_in(page, rig.base, key)
    row = page.locator(f'tr[data-job="{first["job_id"]}"]')
    await expect(row).to_contain_text("0 of 200", timeout=LIVE_S)
    await expect(row.locator(".state")).to_have_text("running")
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    other = page.locator(f'tr[data-job="{second["job_id"]}"]')
    await other.get_by_role("button", name="Cancel").click()
    await expect(other.locator(".state")).to_have_text("cancelled", timeout=LIVE_S)
    worker = Worker(app, concurrency=4)
    await worker.start(rig.plane.bus)
    try:
        await expect(row.locator(".state")).to_have_text("done", timeout=LIVE_S)
        await expect(row).to_contain_text("200 of 200")
    finally:
        await worker.stop(1.0)
    await snapshot(page, "6-a-job-done-another-cancelled")
    assert worker.skipped == 200  # every call of the cancelled job was dropped unstarted
    context = await page.context.browser.new_context()  # type: ignore[union-attr]
    bobs = await context.new_page()
    await log_in(bobs, rig.base, rig.mint("user", "bob"))
    await expect(bobs.locator("#jobs-empty")).to_be_visible(timeout=LIVE_S)
    await expect(bobs.locator("tr[data-job]")).to_have_count(0)
    await context.close()


async def test_the_page_shows_an_apps_last_lines(rig: Rig, page: Page) -> None:
    """Logs on an app's row shows what its replicas printed last, and follows it."""
    talker = (sys.executable, "-u", "-c", "import time\nfor i in range(10**6):\n"
              "    print(f'hello {i}')\n    time.sleep(0.2)")  # fmt: skip
    assert (await rig.plane.deploy("alice", "talker", 1, command=talker)).accepted
    await log_in(page, rig.base, rig.mint("user", "alice"))
    row = page.locator('tr[data-app="talker"]')
    await expect(row).to_be_visible(timeout=LIVE_S)
    await row.get_by_role("button", name="Logs").click()
    lines = page.locator("#logs-lines")
    await expect(lines).to_contain_text("| hello 3", timeout=LIVE_S)
    await expect(lines).to_contain_text("| hello 20", timeout=LIVE_S)  # it follows
    await snapshot(page, "7-an-apps-last-lines")
