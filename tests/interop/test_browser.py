"""Headless Chromium (Debian ``chromium`` driven by Playwright) signs in through the real pages."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest

from tests.conftest import Env
from tests.flows import pkce_pair, query_of

pytestmark = [pytest.mark.interop, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REDIRECT = "https://rp.example/callback"
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def browser() -> Any:
    """Launch Debian's Chromium through Playwright, or skip with the reason."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


def test_browser_login_and_consent_third_party_code(live: Env, browser: Any) -> None:
    tenant = live.tenant()
    client_id, _ = live.oauth_client(tenant, redirect_uris=[REDIRECT], first_party=False)
    live.user(tenant, username="carol", password=PASSWORD)
    _, challenge = pkce_pair()
    params = {
        "response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT, "scope": "openid profile email",
        "state": "st-123", "nonce": "nn", "code_challenge": challenge, "code_challenge_method": "S256",
    }  # fmt: skip
    captured: list[str] = []

    def fulfil(route: Any) -> None:
        # The relying party is not running: capture the final navigation and answer it here.
        captured.append(route.request.url)
        route.fulfill(status=200, content_type="text/html", body="<!doctype html><title>RP</title><p>done</p>")

    context = browser.new_context()
    try:
        page = context.new_page()
        page.route("https://rp.example/**", fulfil)
        page.goto(f"{tenant.issuer}/authorize?{urlencode(params)}")
        page.fill("input[name=username]", "carol")
        page.fill("input[name=password]", PASSWORD)
        page.click("button#sign-in")
        page.wait_for_selector("button#approve")
        assert "email" in page.content()
        page.click("button#approve")
        page.wait_for_url("https://rp.example/**")
        cookies = {cookie["name"]: cookie for cookie in context.cookies(tenant.issuer)}
    finally:
        context.close()
    assert captured, "the browser never reached the redirect URI"
    final = captured[-1]
    assert final.startswith(REDIRECT + "?") and urlsplit(final).netloc == "rp.example"
    query = query_of(final)
    assert query["code"] and query["state"] == "st-123" and query["iss"] == tenant.issuer
    session_cookie = cookies[live.ctx.settings.sessions.cookie_name]
    assert session_cookie["httpOnly"] and session_cookie["sameSite"] == "Lax"
