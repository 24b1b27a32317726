"""The course in a real browser: JupyterLab on loopback, driven by Playwright on Debian's Chromium.

Opens chapters 2, 6, 7, 8, 9 and 10 (fast mode), runs all cells from the Run menu, drags a slider with
the keyboard, and checks that the picture the widget shows has changed. Screenshots go to
test-artifacts/browser/ (or $COURSE_ARTIFACTS_DIR). The notebooks are copied to a temporary
folder first and autosave is off, so the committed chapters are never touched.

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
ARTIFACTS = Path(os.environ.get("COURSE_ARTIFACTS_DIR", REPO / "test-artifacts" / "browser"))
SETTINGS = {  # JupyterLab user settings for the test: no autosave, every cell kept in the page
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}

sync_playwright = pytest.importorskip("playwright.sync_api", reason="the browser test needs 'pip install playwright'"
                                      ).sync_playwright
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
        for _ in range(240):
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited with code {server.returncode}: {(tmp / 'server.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"JupyterLab did not answer on {base} within 2 minutes")
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


def _run_all_and_move_slider(browser, lab, notebook: str, slider_label: str, shot: str,
                             act=_press_end_on_slider) -> tuple[str, str]:
    """Open a chapter, run all cells, act on the widget labelled `slider_label` (by default: press End on
    its slider); return the widget's image before and after."""
    base, token = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    try:
        page.goto(f"{base}/lab/workspaces/{shot}/tree/chapters/{notebook}?token={token}&reset")  # one notebook per page
        page.wait_for_selector(".jp-NotebookPanel .jp-Cell")
        kernel_idle = "document.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status === 'idle'"
        page.wait_for_function(kernel_idle, timeout=120_000)
        page.wait_for_timeout(2000)  # 'idle' also shows for a moment before the session connects
        page.wait_for_function(kernel_idle, timeout=120_000)
        assert page.locator(".jp-Dialog").count() == 0, "JupyterLab asked something on opening (a kernel?)"
        assert page.locator(".jp-Toolbar-kernelName").first.text_content() == "Python 3 (ipykernel)"
        page.click(".lm-MenuBar-itemLabel:text-is('Run')")
        page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
        page.wait_for_function("document.querySelector('.jp-Notebook').textContent.includes('chapter ran in')",
                               timeout=300_000)  # the last cell prints this
        interact = page.locator(".widget-interact", has=page.locator(f".widget-label:text-is('{slider_label}')")).first
        image = interact.locator(".widget-output img").first
        image.wait_for()
        interact.scroll_into_view_if_needed()
        before = image.get_attribute("src")
        interact.screenshot(path=str(ARTIFACTS / f"{shot}_before.png"))
        act(interact)
        page.wait_for_function("([el, old]) => el.querySelector('.widget-output img')?.getAttribute('src') !== old",
                               arg=[interact.element_handle(), before], timeout=120_000)
        after = interact.locator(".widget-output img").first.get_attribute("src")
        interact.screenshot(path=str(ARTIFACTS / f"{shot}_after.png"))
        page.screenshot(path=str(ARTIFACTS / f"{shot}_page.png"))
        assert "Traceback" not in page.locator(".jp-Notebook").text_content(), "a cell raised an error"
        return before, after
    except Exception:
        page.screenshot(path=str(ARTIFACTS / f"{shot}_failure.png"))
        raise
    finally:
        page.close()


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
