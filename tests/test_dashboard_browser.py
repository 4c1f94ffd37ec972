"""The dashboard in a real headless Chromium (Debian's package), served by Streamlit on 127.0.0.1 against the
seeded MLflow store and Optuna study: every page renders its content with no error element. Screenshots are
saved under test-artifacts/."""

import os

import pytest

from dashboard import serve
from services.supervisor import terminate
from tests.helpers.browser import find_chromium, headless_chromium
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
}


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory, tiny_data):
    root = tmp_path_factory.mktemp("browser")
    seeded = seed_platform(root, tiny_data)
    env = {**os.environ, "MLFLOW_TRACKING_URI": seeded["uri"], "FLAIR_SWEEP_STORAGE": seeded["storage"],
           "FLAIR_DATA_ROOT": str(seeded["data"])}
    port = free_port()
    proc = serve.start(port, root / "dashboard.log", env)
    yield f"http://127.0.0.1:{port}"
    terminate(proc, serve.LABEL)


def test_every_page_renders_in_chromium_without_an_error_element(dashboard, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    with headless_chromium(tmp_path) as browser:
        for path, expected in PAGES.items():
            page = browser.render(f"{dashboard}/{path}", wait_for_text=expected, absent_selector=BUSY,
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
