"""Headless Chromium for the page tests: Debian's binary (a missing browser fails the test), the
page's console errors and every request it makes recorded, screenshots in test-artifacts/."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
# What a page may load without leaving the machine: itself, inline data, its own downloads.
OUTSIDE = ("file:", "data:", "blob:")


@dataclass
class Browsing:
    """One open page and what it reported."""

    page: Any
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


@contextmanager
def open_page(width: int = 1400, height: int = 1000) -> Iterator[Browsing]:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), f"Chromium is required at {CHROMIUM} (apt-get install chromium)"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            seen = Browsing(page)
            page.on("console", lambda m: m.type == "error" and seen.errors.append(m.text))
            page.on("pageerror", lambda e: seen.errors.append(str(e)))
            page.on("request", lambda r: seen.requests.append(r.url))
            yield seen
        finally:
            browser.close()


def block_outside(page: Any) -> None:
    """Abort every request that would leave the machine (anything not in `OUTSIDE`)."""
    page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(OUTSIDE) else r.abort())


def click_every_toolbar_button(page: Any) -> list[str]:
    """Click every plotly toolbar button on the page (one of them downloads a PNG) and return
    their titles; none may be a share or cloud button."""
    buttons = page.locator(".modebar-btn")
    titles = [buttons.nth(i).get_attribute("data-title") for i in range(buttons.count())]
    assert titles and not any("share" in t.lower() or "cloud" in t.lower() for t in titles)
    with page.expect_download(timeout=30_000):
        for i in range(buttons.count()):
            buttons.nth(i).dispatch_event("click")
    page.wait_for_timeout(1000)
    return titles


def left_the_machine(seen: Browsing) -> list[str]:
    """The requests the page attempted beyond `OUTSIDE` (blocked or not)."""
    return [r for r in seen.requests if not r.startswith(OUTSIDE)]


def pixel(page: Any, x: float, y: float) -> tuple[int, int, int]:
    """The RGB colour a person sees at viewport point (x, y): a 1 x 1 screenshot, decoded (a
    single pixel's PNG scanline is its raw bytes whatever the row filter)."""
    import struct
    import zlib

    png = page.screenshot(clip={"x": x, "y": y, "width": 1, "height": 1})
    pos, idat = 8, b""
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos : pos + 8])
        if kind == b"IDAT":
            idat += png[pos + 8 : pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    return raw[1], raw[2], raw[3]
