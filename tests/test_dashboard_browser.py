"""The dashboard in a real headless Chromium (Debian's package), served by Streamlit on 127.0.0.1 against the
seeded MLflow store and Optuna study: every page renders its content with no error element. Screenshots are
saved under test-artifacts/."""

import json
import os

import pytest

from dashboard import serve
from services.supervisor import terminate
from tests.helpers.browser import find_chromium, headless_chromium
from tests.helpers.browser_tab import open_tab
from tests.helpers.dashboard_seed import seed_platform
from tests.helpers.paths import ARTIFACTS
from tests.helpers.processes import free_port

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(find_chromium() is None,
                                 reason="Chromium not installed (apt-get install chromium)")]
ERROR = '[data-testid="stException"], [data-testid="stAlertContentError"]'
BUSY = '[data-testid="stStatusWidget"]'  # shown while a script runs
DEPLOY = '[data-testid="stAppDeployButton"]'  # developer toolbar: hidden by dashboard/.streamlit/config.toml
PAGES = {  # url path -> text that only the rendered page shows
    "": "Key metrics, deltas against clip",
    "paper": "This platform's runs, for scale",
    "sweeps": "Parameter importances (fANOVA)",
    "registry": "is within the interval [11.20, 14.80] (the champion kept no per-query records",
    "inspect": "rank of",
    "study": "No study logged yet",  # the seeded store has no study: the page says how to make one
    "runs": "Training on this machine",
}


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory, tiny_data):
    root = tmp_path_factory.mktemp("browser")
    seeded = seed_platform(root, tiny_data)
    env = {**os.environ, "MLFLOW_TRACKING_URI": seeded["uri"], "FLAIR_SWEEP_STORAGE": seeded["storage"],
           "FLAIR_DATA_ROOT": str(seeded["data"]), "FLAIR_RUNS_ROOT": str(seeded["runs_root"])}
    port = free_port()
    proc = serve.start(port, root / "dashboard.log", env)
    yield {**seeded, "url": f"http://127.0.0.1:{port}"}
    terminate(proc, serve.LABEL)


def test_every_page_renders_in_chromium_without_an_error_element(dashboard, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    with headless_chromium(tmp_path) as browser:
        for path, expected in PAGES.items():
            page = browser.render(f"{dashboard['url']}/{path}", wait_for_text=expected, absent_selector=BUSY,
                                  timeout=120, count=(ERROR, DEPLOY, '[data-testid="stDataFrame"]'))
            name = path or "compare"
            (ARTIFACTS / f"dashboard_{name}.png").write_bytes(page.screenshot)
            assert page.counts[ERROR] == 0, f"{name}: {page.text[-1500:]}"
            assert page.counts[DEPLOY] == 0, f"{name}: the developer toolbar is shown to users"
            assert page.screenshot.startswith(b"\x89PNG") and len(page.screenshot) > 20_000
            if name == "compare":  # the comparison itself: every method's row and the chart
                assert page.counts['[data-testid="stDataFrame"]'] >= 2
                assert all(method in page.text for method in ("flair", "clip", "filip", "dreamlip"))
                assert "Side by side" in page.text


def dropdown(label: str) -> str:
    """JS: the button that opens the selectbox labelled `label` (a react-aria combo box)."""
    return (f"document.querySelector('input[aria-label={json.dumps(label)}]')"
            ".parentElement.querySelector('button[aria-label=\"Open\"]')")


def option(text: str) -> str:
    """JS: the open dropdown's option holding `text`."""
    return (f"[...document.querySelectorAll('[role=\"option\"]')]"
            f".find(o => o.innerText.includes({json.dumps(text)}))")


def test_inspect_compares_two_models_and_opens_a_disagreement_in_chromium(dashboard, tmp_path):
    """Pick a second model in Inspect, click the second row of the disagreements list (its grid is a canvas:
    a real mouse click on the row's selection marker), and the comparison shows that query: its caption in the
    caption box, its image picked, both models' top 5 for it."""
    from dashboard import data

    fine = data.builtin_queries(dashboard["data"])
    beside, row = "flair-lab-clip v1 (champion)", 1  # the seeded records: queries 80, 84, ... differ
    caption, source = fine["texts"][84], fine["source"][84]
    caption_box = "document.querySelector('input[aria-label=\"Caption\"]').value"
    with headless_chromium(tmp_path) as browser, open_tab(browser) as tab:
        tab.goto(f"{dashboard['url']}/inspect")
        tab.wait("document.body.innerText.includes('rank of')", "Inspect", timeout=120, settle=BUSY)
        tab.click(dropdown("Beside it"))
        tab.wait(f"!!{option(beside)}", "the list of models")
        tab.click(option(beside))
        tab.wait("document.body.innerText.includes('Where the two disagree')", "the disagreements list",
                 timeout=120, settle=BUSY)
        assert "finds 5 at rank 1 that" in tab.text()
        grid = "[...document.querySelectorAll('[data-testid=\"stDataFrame\"]')].at(-1)"
        tab.click(grid, dx=18, dy=35 * (row + 1) + 17)  # a row under the 35 px header, on its marker
        tab.wait(f"{caption_box} === {json.dumps(caption)}", "the opened query's caption", timeout=120,
                 settle=BUSY)
        text = tab.text()
        assert text.count(f"rank of {source} for the caption") == 2, text[-2000:]
        assert text.count("✓") + text.count("✗") >= 10  # both columns' top 5, each marked
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "dashboard_inspect_disagreement.png").write_bytes(tab.screenshot())
        assert tab.js(f"document.querySelectorAll({json.dumps(ERROR)}).length") == 0, text[-1500:]
