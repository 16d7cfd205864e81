#!/usr/bin/env python3
"""Open a report.html in headless Chromium and check what a reader would see.

    python scripts/check_report.py REPORT.html [--screenshot PNG] [--width 1280] [--table "#summary"]

Checks: no console errors or uncaught exceptions, nothing fetched from outside the file (it must
open offline), every image decoded, and the summary table fully visible at the window width (no
part of it outside the page or hidden in its scroll box). Prints the findings as JSON; exit code
0 when every check passes, 1 when one fails, 2 when no Chromium is found.

Chromium is driven through its DevTools protocol over a pipe (--remote-debugging-pipe), so the
script needs the Python standard library and a Chromium binary only (Debian: apt-get install
chromium).
"""
from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    env = os.environ.get("CHROMIUM")
    if env and shutil.which(env):
        return shutil.which(env)
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    return None


class DevTools:
    """The DevTools protocol over --remote-debugging-pipe: JSON messages separated by NUL bytes on
    file descriptors 3 (to Chromium) and 4 (from Chromium)."""

    def __init__(self, binary: str, width: int, height: int, timeout: float = 60.0):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="lesionlab-chromium-")
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()
        # the child's ends above 9, so that putting them onto 3 and 4 cannot overwrite one with the other
        child_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
        child_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
        for fd in (to_chrome_r, from_chrome_w):
            os.close(fd)
        args = [binary, "--headless=new", "--remote-debugging-pipe", f"--user-data-dir={self.profile}",
                "--no-first-run", "--no-default-browser-check", "--disable-gpu", "--disable-extensions",
                "--disable-background-networking", "--disable-sync", "--disable-dev-shm-usage", "--mute-audio",
                "--hide-scrollbars", f"--window-size={width},{height}", "about:blank"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run its sandbox as root (CI containers)
        self.log_path = Path(self.profile) / "chromium.log"
        self.log = open(self.log_path, "wb")

        def onto_3_and_4() -> None:  # in the child, before exec: Chromium reads fd 3 and writes fd 4
            os.dup2(child_r, 3)
            os.dup2(child_w, 4)

        self.proc = subprocess.Popen(args, pass_fds=(3, 4), preexec_fn=onto_3_and_4, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        os.close(child_r)
        os.close(child_w)
        self.send_file = os.fdopen(to_chrome_w, "wb", buffering=0)
        self.recv_fd = from_chrome_r
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        import select

        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self.recv_fd], [], [], left)
            if ready:
                chunk = os.read(self.recv_fd, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"Chromium closed the pipe: {self.log_tail()}")
                self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def log_tail(self, n: int = 1500) -> str:
        self.log.flush()
        return self.log_path.read_bytes()[-n:].decode(errors="replace")

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        try:
            self.send_file.write(json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            raise RuntimeError(f"Chromium exited (code {self.proc.poll()}): {self.log_tail()}") from None
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        while True:
            event = self._read_message(deadline)
            if event.get("method") == method:
                return event
            self.events.append(event)

    def drain(self, seconds: float) -> None:
        """Collect the events that arrive within `seconds` (late console messages)."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                self.events.append(self._read_message(deadline))
        except TimeoutError:
            pass

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.send_file.close()
        os.close(self.recv_fd)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


PAGE_FACTS = r"""
(async (selector) => {
  const images = await Promise.all(Array.from(document.images).map(async (img, i) => {
    let error = "";
    try { await img.decode(); } catch (e) { error = String(e); }
    return {index: i, alt: img.alt, src: (img.getAttribute("src") || "").slice(0, 40),
            decoded: !error && img.complete && img.naturalWidth > 0, width: img.naturalWidth,
            height: img.naturalHeight, error};
  }));
  const resources = performance.getEntriesByType("resource").map(e => e.name)
    .filter(n => !n.startsWith("data:"));
  const table = document.querySelector(selector);
  let t = null;
  if (table) {
    const r = table.getBoundingClientRect();
    const box = table.closest(".table-wrap") || table.parentElement;
    const b = box.getBoundingClientRect();
    const cells = Array.from(table.querySelectorAll("th, td"));
    const hidden = cells.filter(c => {
      const cr = c.getBoundingClientRect();
      return cr.left < Math.max(0, b.left) - 0.5 || cr.right > Math.min(innerWidth, b.right) + 0.5 ||
             cr.top < b.top - 0.5 || cr.bottom > b.bottom + 0.5;
    }).map(c => c.textContent.trim().slice(0, 40));
    t = {left: r.left, right: r.right, width: r.width, top: r.top + scrollY, height: r.height,
         box_client_width: box.clientWidth, box_scroll_width: box.scrollWidth,
         box_client_height: box.clientHeight, box_scroll_height: box.scrollHeight,
         cells: cells.length, hidden_cells: hidden, rows: table.querySelectorAll("tbody tr").length};
  }
  return {images, resources, table: t, viewport_width: innerWidth, viewport_height: innerHeight,
          page_width: document.documentElement.scrollWidth, page_height: document.documentElement.scrollHeight,
          title: document.title};
})
"""


def check_report(report: str | os.PathLike, screenshot: str | os.PathLike | None = None, width: int = 1280,
                 height: int = 900, selector: str = "#summary", binary: str | None = None,
                 max_screenshot_height: int = 6000, timeout: float = 60.0) -> dict:
    """Open `report` in headless Chromium at `width` pixels; return the findings and `ok`."""
    binary = shutil.which(binary) if binary else find_chromium()
    if not binary:
        raise FileNotFoundError("no Chromium found (" + ", ".join(BINARIES) + " on PATH, or --chromium BINARY); "
                                "on Debian: apt-get install chromium")
    report = Path(report).resolve()
    if not report.is_file():
        raise FileNotFoundError(f"{report}: no such file")
    started = time.monotonic()
    chrome = DevTools(binary, width, height, timeout)
    try:
        target = chrome.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = chrome.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            chrome.call(f"{domain}.enable", session=session)
        chrome.call("Emulation.setDeviceMetricsOverride",
                    {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)
        chrome.call("Page.navigate", {"url": report.as_uri()}, session)
        chrome.wait_event("Page.loadEventFired", timeout)
        facts = chrome.call("Runtime.evaluate", {"expression": f"{PAGE_FACTS}({json.dumps(selector)})",
                                                 "awaitPromise": True, "returnByValue": True}, session)
        if "exceptionDetails" in facts:
            raise RuntimeError(f"the page check itself failed: {facts['exceptionDetails']}")
        page = facts["result"]["value"]
        chrome.drain(0.3)
        if screenshot:
            shot_height = min(int(page["page_height"]), max_screenshot_height)
            chrome.call("Emulation.setDeviceMetricsOverride",
                        {"width": width, "height": shot_height, "deviceScaleFactor": 1, "mobile": False}, session)
            data = chrome.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False}, session)
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            Path(screenshot).write_bytes(base64.b64decode(data["data"]))
    finally:
        chrome.close()
    errors = _console_errors(chrome.events)
    bad_images = [i for i in page["images"] if not i["decoded"]]
    t = page["table"]
    table_problems = []
    if t is None:
        table_problems.append(f"no element matches {selector}")
    else:
        if t["left"] < 0 or t["right"] > page["viewport_width"] + 0.5:
            table_problems.append(f"table spans x {t['left']:.0f}..{t['right']:.0f}, window is {page['viewport_width']} wide")
        if t["box_scroll_width"] > t["box_client_width"] + 1:
            table_problems.append(f"table needs horizontal scrolling ({t['box_scroll_width']} px in a "
                                  f"{t['box_client_width']} px box)")
        if t["hidden_cells"]:
            table_problems.append(f"{len(t['hidden_cells'])} cell(s) outside the visible box, e.g. {t['hidden_cells'][:3]}")
    if page["page_width"] > page["viewport_width"] + 1:
        table_problems.append(f"the page is {page['page_width']} px wide at a {page['viewport_width']} px window")
    checks = {
        "no_console_errors": not errors,
        "offline": not page["resources"],
        "images_decoded": bool(page["images"]) and not bad_images,
        "summary_table_visible": not table_problems,
    }
    return {"ok": all(checks.values()), "checks": checks, "report": str(report), "width": width,
            "console_errors": errors, "external_resources": page["resources"], "images": len(page["images"]),
            "bad_images": bad_images, "table": t, "table_problems": table_problems,
            "page": {k: page[k] for k in ("page_width", "page_height", "viewport_width", "title")},
            "screenshot": str(screenshot) if screenshot else None, "chromium": binary,
            "seconds": round(time.monotonic() - started, 2)}


def _console_errors(events: list[dict]) -> list[str]:
    out = []
    for e in events:
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console." + p["type"] + ": " + " ".join(str(a.get("value", a.get("description", "")))
                                                                for a in p.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append("exception: " + str(d.get("exception", {}).get("description") or d.get("text", "")))
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            entry = p["entry"]
            out.append(f"{entry.get('source', 'log')}: {entry.get('text', '')} {entry.get('url', '')}".strip())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", help="report.html to check")
    ap.add_argument("--screenshot", default=None, help="PNG to save (the page at the window width)")
    ap.add_argument("--width", type=int, default=1280, help="window width in CSS pixels")
    ap.add_argument("--height", type=int, default=900, help="window height in CSS pixels")
    ap.add_argument("--table", default="#summary", help="CSS selector of the table that must be fully visible")
    ap.add_argument("--chromium", default=None, help="the browser binary (default: chromium on PATH, or $CHROMIUM)")
    args = ap.parse_args(argv)
    try:
        result = check_report(args.report, args.screenshot, args.width, args.height, args.table, args.chromium)
    except FileNotFoundError as e:
        print(f"check_report: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    failed = [k for k, ok in result["checks"].items() if not ok]
    print(("report check passed: " if not failed else "report check FAILED: " + ", ".join(failed) + "; ")
          + f"{result['images']} images, summary table {result['table']['width']:.0f} px wide at {args.width} px"
          if result["table"] else "", file=sys.stderr)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
