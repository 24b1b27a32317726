"""The course in a real browser: JupyterLab on loopback, driven by Playwright on Debian's Chromium.

Opens chapters 2, 6, 7, 8, 9, 10 and 11 (fast mode), runs all cells from the Run menu, drags a slider with
the keyboard (two in chapter 11), and checks that the picture the widget shows has changed. Screenshots go to
test-artifacts/browser/ (or $COURSE_ARTIFACTS_DIR). The notebooks are copied to a temporary
folder first and autosave is off, so the committed chapters are never touched.

Nothing waits a fixed time for a step: each test polls its conditions (kernel idle in the notebook's execution
indicator, the last cell's output printed, the widget's picture changed) against one deadline for the whole test,
COURSE_BROWSER_TIMEOUT_S (default 20 minutes), so a busy machine makes it slower but not red; a failure names the
chapter, the widget, what it waited for, the kernel status and the last output text it saw.

Needs `chromium` (Debian: `apt-get install chromium`; `.ci/run` installs it) and the `playwright`
Python package (requirements.txt); skipped, with that message, where either is missing.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
SERVER_START_S = 300  # JupyterLab answering on loopback, on a busy machine
ARTIFACTS = Path(os.environ.get("COURSE_ARTIFACTS_DIR", REPO / "test-artifacts" / "browser"))
SETTINGS = {  # JupyterLab user settings for the test: no autosave, every cell kept in the page
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}

_playwright = pytest.importorskip("playwright.sync_api", reason="the browser test needs 'pip install playwright'")
sync_playwright, PlaywrightTimeoutError = _playwright.sync_playwright, _playwright.TimeoutError
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="the browser test needs Debian's Chromium at "
                                 "/usr/bin/chromium: 'apt-get install chromium' (.ci/run installs it)")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on loopback over a copy of the chapters; yields (base URL, token)."""
    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "root"
    shutil.copytree(REPO / "chapters", root / "chapters", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    for name, values in SETTINGS.items():
        path = tmp / "settings" / name.split("/")[0] / name.split("/")[1]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "DIFFUSION_COURSE_FAST": "1", "JUPYTER_CONFIG_DIR": str(tmp / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp / "runtime")}
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
               f"--LabApp.user_settings_dir={tmp / 'settings'}", f"--LabApp.workspaces_dir={tmp / 'workspaces'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    log = open(tmp / "server.log", "w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        while True:  # polled against a deadline, not a count of tries: a busy machine only makes it slower
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited with code {server.returncode}: {(tmp / 'server.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=10).close()
                break
            except OSError as error:
                if time.monotonic() - started > SERVER_START_S:
                    pytest.fail(f"JupyterLab did not answer on {base} within {SERVER_START_S:.0f} s (last: {error}); "
                                f"its log ends: {(tmp / 'server.log').read_text()[-2000:]}", pytrace=False)
                time.sleep(0.5)
        yield base, token
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _press_end_on_slider(interact) -> None:
    handle = interact.locator(".widget-slider .noUi-handle").first
    handle.focus()
    handle.press("End")  # the slider's maximum


# Every wait below polls a condition against one deadline per test instead of trusting a fixed per-step timeout, so a
# busy machine makes the test slower, not red; when the deadline passes, the failure names the chapter, the widget,
# what was awaited and what the page showed (kernel status, cells still queued, the last output, the widget's output).
TEST_BUDGET_S = float(os.environ.get("COURSE_BROWSER_TIMEOUT_S", 1200))  # the whole test, opening to screenshots
POLL_S = 0.5

_STATE_JS = """() => {
  const text = el => (el?.textContent ?? '').replace(/\\s+/g, ' ').trim();
  const outputs = [...document.querySelectorAll('.jp-Notebook .jp-Cell .jp-OutputArea-output')].filter(o => text(o));
  const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')].map(text);
  const errors = [...document.querySelectorAll('.jp-Notebook .jp-OutputArea-output')]
                   .filter(o => o.textContent.includes('Traceback'));  // a cell (or a widget's callback) raised
  return {
    indicator: document.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status ?? null,
    statusbar: [...document.querySelectorAll('#jp-main-statusbar .jp-StatusBar-TextItem')].map(text)
                 .find(t => t.includes(' | ')) ?? null,  // 'Python 3 (ipykernel) | Idle'
    cells: document.querySelectorAll('.jp-Notebook .jp-Cell').length,
    code_cells: prompts.length,
    queued: prompts.filter(p => p.includes('[*]')).length,
    executed: prompts.filter(p => /\\[\\d+\\]/.test(p)).length,
    ran: outputs.some(o => text(o).includes('chapter ran in')),
    last_output: outputs.length ? text(outputs[outputs.length - 1]).slice(-400) : null,
    error: errors.length ? text(errors[0]).slice(0, 600) : null,
    dialog: text(document.querySelector('.jp-Dialog')).slice(0, 300) || null,
  };
}"""

_WIDGET_JS = """(el) => {
  const img = el?.querySelector('.widget-output img');
  return {found: !!el, src: img ? img.getAttribute('src') : null,
          text: (el?.querySelector('.widget-output')?.textContent ?? '').replace(/\\s+/g, ' ').trim().slice(-400)};
}"""


class _Waiter:
    """Polls conditions on one chapter's page against the test's single deadline; fails with what it saw."""

    def __init__(self, page, notebook: str, widget: str, budget_s: float = TEST_BUDGET_S):
        self.page, self.notebook, self.widget, self.budget_s = page, notebook, widget, budget_s
        self.start = time.monotonic()
        self.deadline = self.start + budget_s
        self.interact = None  # the widget's locator, once known, for its state in failure messages
        self.steps: list[str] = []  # "what: seconds", for the failure message and the log

    def remaining_ms(self) -> float:
        return max(1000.0, (self.deadline - time.monotonic()) * 1000)

    def state(self) -> dict:
        try:
            state = self.page.evaluate(_STATE_JS)
        except Exception as error:  # the page itself may be what is stuck
            state = {"page": f"unreadable ({type(error).__name__}: {error})".splitlines()[0]}
        if self.interact is not None:
            try:
                handle = self.interact.element_handle(timeout=2000)
                state["widget"] = self.page.evaluate(_WIDGET_JS, handle)
            except Exception as error:
                state["widget"] = f"not found ({type(error).__name__})"
        return state

    def fail(self, what: str, state: dict | None = None, why: str = "gave up") -> None:
        state = self.state() if state is None else state
        widget = state.get("widget")
        if isinstance(widget, dict) and widget.get("src"):
            widget = {**widget, "src": widget["src"][:40] + f"... ({len(widget['src'])} chars)"}
        lines = [f"{self.notebook}, widget '{self.widget}': {why} after {time.monotonic() - self.start:.0f} s "
                 f"(budget {self.budget_s:.0f} s, COURSE_BROWSER_TIMEOUT_S) waiting for {what}",
                 f"  kernel status (execution indicator): {state.get('indicator')!r}; status bar: "
                 f"{state.get('statusbar')!r}",
                 f"  code cells: {state.get('code_cells')}, executed: {state.get('executed')}, still queued/running: "
                 f"{state.get('queued')}; 'chapter ran in' printed: {state.get('ran')}",
                 f"  last output text: {state.get('last_output')!r}",
                 f"  widget: {widget!r}"]
        for key in ("error", "dialog", "page"):
            if state.get(key):
                lines.append(f"  {key}: {state[key]!r}")
        lines.append(f"  steps done: {', '.join(self.steps) or 'none'}")
        pytest.fail("\n".join(lines), pytrace=False)

    def until(self, what: str, check, stable_s: float = 0.0):
        """Poll `check(state)` until it holds (and keeps holding for `stable_s` seconds); return that state. Fail at
        the deadline, or at once when a cell raised or JupyterLab opened a dialog."""
        began, held_since, state = time.monotonic(), None, {}
        while True:
            state = self.state()
            if state.get("error"):
                self.fail(what, state, why="a cell raised an error")
            if state.get("dialog"):
                self.fail(what, state, why="JupyterLab opened a dialog")
            result = check(state) if "page" not in state else None
            now = time.monotonic()
            if result:
                held_since = now if held_since is None else held_since
                if now - held_since >= stable_s:
                    self.steps.append(f"{what}: {now - began:.0f} s")
                    return state
            else:
                held_since = None
            if now >= self.deadline:
                self.fail(what, state)
            self.page.wait_for_timeout(POLL_S * 1000)

    def do(self, what: str, action) -> None:
        """Run a Playwright action bounded by the time left; on its timeout, fail with the state seen."""
        self.page.set_default_timeout(self.remaining_ms())
        try:
            action()
        except PlaywrightTimeoutError:
            self.fail(what, why="the action timed out")
        self.steps.append(what)


def _shut_down_kernel(lab, notebook: str) -> None:
    """Stop the chapter's kernel, so that a chapter still running (a failed test) takes no CPU from the next one."""
    base, token = lab
    try:
        with urllib.request.urlopen(f"{base}/api/sessions?token={token}", timeout=30) as response:
            sessions = json.load(response)
        for session in sessions:
            if session.get("path", "").endswith(notebook):
                request = urllib.request.Request(f"{base}/api/sessions/{session['id']}?token={token}", method="DELETE")
                urllib.request.urlopen(request, timeout=60).close()
    except OSError:
        pass  # the server is going away anyway; nothing to assert here


def _run_all_and_move_slider(browser, lab, notebook: str, slider_label: str, shot: str,
                             act=_press_end_on_slider) -> tuple[str, str]:
    """Open a chapter, run all cells, act on the widget labelled `slider_label` (by default: press End on
    its slider); return the widget's image before and after."""
    return _run_all_and_move_sliders(browser, lab, notebook, [(slider_label, shot, act)])[0]


def _run_all_and_move_sliders(browser, lab, notebook: str, widgets: list) -> list[tuple[str, str]]:
    """Open a chapter, run all cells, then for each (label, shot, act) in `widgets`, in order: act on the first widget
    labelled `label` and wait until its picture changes; return each widget's image before and after."""
    base, token = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    wait = _Waiter(page, notebook, widgets[0][0])
    page.set_default_timeout(wait.remaining_ms())
    page.set_default_navigation_timeout(wait.remaining_ms())
    idle = lambda s: s.get("indicator") == "idle"  # noqa: E731
    try:
        wait.do("opening the notebook", lambda: page.goto(
            f"{base}/lab/workspaces/{widgets[0][1]}/tree/chapters/{notebook}?token={token}&reset"))  # one per page
        wait.until("the notebook's cells to show", lambda s: s.get("cells"))
        # 'idle' also shows for a moment before the session connects: it must hold for a few seconds
        wait.until("the kernel to start and be idle", idle, stable_s=3)
        assert page.locator(".jp-Dialog").count() == 0, "JupyterLab asked something on opening (a kernel?)"
        assert page.locator(".jp-Toolbar-kernelName").first.text_content() == "Python 3 (ipykernel)"
        wait.do("clicking Run > Run All Cells", lambda: (page.click(".lm-MenuBar-itemLabel:text-is('Run')"),
                                                         page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")))
        # the last cell prints 'chapter ran in' (its source says so too: only an output counts), then all is idle
        wait.until("every cell to run (the last cell's output 'chapter ran in ...', no cell queued, kernel idle)",
                   lambda s: s.get("ran") and not s.get("queued") and idle(s), stable_s=1)
        pairs = []
        for label, shot, act in widgets:
            interact = page.locator(".widget-interact", has=page.locator(f".widget-label:text-is('{label}')")).first
            wait.widget, wait.interact = label, interact
            before = wait.until("the widget's picture", lambda s: isinstance(s.get("widget"), dict)
                                and (s["widget"].get("src") or "").startswith("data:"))["widget"]["src"]
            wait.do("scrolling to the widget", interact.scroll_into_view_if_needed)
            wait.do("the 'before' screenshot", lambda: interact.screenshot(path=str(ARTIFACTS / f"{shot}_before.png")))
            wait.do(f"acting on the widget '{label}'", lambda: act(interact))
            # the kernel redraws: done when the picture differs from before and the kernel is idle again
            after = wait.until("the widget's picture to change from before, and the kernel to be idle again",
                               lambda s: idle(s) and isinstance(s.get("widget"), dict) and s["widget"].get("src")
                               and s["widget"]["src"] != before, stable_s=1)["widget"]["src"]
            wait.do("the 'after' screenshots", lambda: (interact.screenshot(path=str(ARTIFACTS / f"{shot}_after.png")),
                                                        page.screenshot(path=str(ARTIFACTS / f"{shot}_page.png"))))
            pairs.append((before, after))
        assert "Traceback" not in page.locator(".jp-Notebook").text_content(), "a cell raised an error"
        print(f"{notebook}: {time.monotonic() - wait.start:.0f} s ({'; '.join(wait.steps)})")
        return pairs
    except BaseException:
        try:
            page.screenshot(path=str(ARTIFACTS / f"{widgets[0][1]}_failure.png"), timeout=30_000)
        except Exception:
            pass  # the failure itself is what matters
        raise
    finally:
        page.close()
        _shut_down_kernel(lab, notebook)


def test_chapter_2_timestep_slider_redraws_the_noised_images(browser, lab):
    before, after = _run_all_and_move_slider(browser, lab, "02_forward_noising.ipynb", "t", "chapter02_timestep")
    assert before.startswith("data:image/png") and after.startswith("data:image/png") and before != after


def test_chapter_6_guidance_slider_redraws_the_samples(browser, lab):
    before, after = _run_all_and_move_slider(browser, lab, "06_guidance.ipynb", "w", "chapter06_guidance")
    assert before.startswith("data:image/png") and after.startswith("data:image/png") and before != after


def test_chapter_7_caption_box_redraws_the_samples(browser, lab):
    def type_caption(interact):
        box = interact.locator(".widget-text input").first
        box.fill("a thin upright one")
        box.press("Enter")

    before, after = _run_all_and_move_slider(browser, lab, "07_text_inpainting_solvers.ipynb", "text",
                                             "chapter07_caption", act=type_caption)
    assert before.startswith("data:image/png") and after.startswith("data:image/png") and before != after


def test_chapter_8_steps_slider_redraws_the_paths_and_samples(browser, lab):
    before, after = _run_all_and_move_slider(browser, lab, "08_flow_matching.ipynb", "steps", "chapter08_steps")
    assert before.startswith("data:image/png") and after.startswith("data:image/png") and before != after


def test_chapter_9_steps_slider_redraws_teacher_and_students(browser, lab):
    before, after = _run_all_and_move_slider(browser, lab, "09_few_steps.ipynb", "steps", "chapter09_steps")
    assert before.startswith("data:image/png") and after.startswith("data:image/png") and before != after


def test_chapter_10_guidance_slider_reruns_the_whole_pipeline(browser, lab):
    before, after = _run_all_and_move_slider(browser, lab, "10_latent_diffusion.ipynb", "w", "chapter10_guidance")
    assert before.startswith("data:image/png") and after.startswith("data:image/png") and before != after


def test_chapter_11_sliders_redraw_two_moons_and_mnist(browser, lab):
    """Section 5's steps slider (four two-moons models), then section 7's calls slider (MNIST: MeanFlow, chapter 9's
    students and the teacher), in one run of the chapter."""
    pairs = _run_all_and_move_sliders(browser, lab, "11_one_step_from_scratch.ipynb",
                                      [("steps", "chapter11_steps", _press_end_on_slider),
                                       ("calls", "chapter11_mnist_calls", _press_end_on_slider)])
    for before, after in pairs:
        assert before.startswith("data:image/png") and after.startswith("data:image/png") and before != after
