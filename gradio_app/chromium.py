"""Debian's Chromium for the page's real-browser test and screenshot (Playwright cannot
download browsers here; see the README's test section). No gradio or playwright import."""

CHROMIUM = "/usr/bin/chromium"
# Headless in a sandboxed container, no GPU, no network chatter of its own.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
