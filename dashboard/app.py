"""FLAIR Lab dashboard: compare runs with the baselines and the paper, read the equal-budget study's report,
browse sweeps and the registry, inspect and compare models' retrievals, follow trainings as they run.
Read-only.

    eval "$(.venv/bin/python -m services env)"
    .venv/bin/python -m streamlit run dashboard/app.py --server.address 127.0.0.1
"""

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `dashboard` and `flair_core` from the repo

PAGES = Path(__file__).parent / "pages"
st.set_page_config(page_title="FLAIR Lab", layout="wide")
st.navigation([
    st.Page(PAGES / "compare.py", title="Compare", icon=":material/bar_chart:", default=True),
    st.Page(PAGES / "paper.py", title="Paper", icon=":material/menu_book:"),
    st.Page(PAGES / "study.py", title="Study", icon=":material/science:"),
    st.Page(PAGES / "sweeps.py", title="Sweeps", icon=":material/tune:"),
    st.Page(PAGES / "registry.py", title="Registry", icon=":material/inventory_2:"),
    st.Page(PAGES / "inspect.py", title="Inspect", icon=":material/visibility:"),
    st.Page(PAGES / "runs.py", title="Runs", icon=":material/monitoring:"),
]).run()
