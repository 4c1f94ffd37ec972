"""Registry: registered models, who holds champion/challenger and why, and each version's lineage."""

import streamlit as st

from dashboard import data

st.title("Model registry")
settings = data.settings()
versions = data.or_stop(data.registry, settings.tracking_uri)
if versions.empty:
    st.info("No registered model yet: a `pretrain-eval` run registers its model as flair-lab-<method>.")
    st.stop()

for name, group in versions.groupby("model", sort=True):
    st.subheader(name)
    holders = {alias: row for _, row in group.iterrows() for alias in row["aliases"].split(", ") if alias}
    columns = st.columns(2)
    for column, alias in zip(columns, ("champion", "challenger"), strict=True):
        row = holders.get(alias)
        if row is None:
            column.metric(alias, "—")
        else:
            column.metric(alias, f"v{row['version']}")
            column.caption(row["decision"] or "no decision recorded")
    table = group.sort_values("version", ascending=False)[
        ["version", "aliases", "decision", "git_commit", "data_hash", "data_level", "preset", "run_key",
         "created", "link"]]
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={"link": st.column_config.LinkColumn("MLflow run", display_text="open run")})
    with st.expander("Training params of each version"):
        for _, row in group.sort_values("version", ascending=False).iterrows():
            st.markdown(f"**v{row['version']}** · run `{row['run_id']}`")
            st.json(row["params"], expanded=False)
