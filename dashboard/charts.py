"""Charts the pages draw from `data`'s frames: Altair specs for `st.altair_chart`, no Streamlit here."""

from __future__ import annotations

import altair as alt
import pandas as pd

from dashboard.data import EXCLUDES_CHANCE, HOLDS_CHANCE, NO_INTERVAL

BAR = 16  # px per bar; a metric's band holds one bar per method
LEGENDS = 90  # px below the bars for the axis title and the legends (Streamlit fits the whole into `height`)
LEVELS = {"chance": "#222222", "majority class": "#c05a00"}  # reference level -> tick colour
GREY = "#b0b0b0"  # a bar whose interval holds chance: no better than chance, greyed out and faded
OPACITY = {EXCLUDES_CHANCE: 1.0, NO_INTERVAL: 0.7, HOLDS_CHANCE: 0.35}  # no interval logged: unknown


def reference_levels(frame: pd.DataFrame) -> pd.DataFrame:
    """Each metric's distinct reference levels in `uncertainty_frame`'s rows: metric, level (chance or
    majority class), at (percent)."""
    levels = frame.melt(id_vars=["metric"], value_vars=["chance", "majority"], var_name="level",
                        value_name="at").dropna().drop_duplicates()
    return levels.assign(level=levels["level"].replace({"majority": "majority class"}))


def uncertainty_chart(frame: pd.DataFrame) -> alt.LayerChart:
    """`data.uncertainty_frame` as grouped horizontal bars (metric by row, one bar per method), each with its
    95 % interval as an error bar, each metric's chance (and majority-class) level as a tick across its band,
    and bars whose interval holds chance grey and faded (legend "95 % interval")."""
    metrics = list(dict.fromkeys(frame["metric"]))
    methods = list(dict.fromkeys(frame["method"]))
    y = alt.Y("metric:N", sort=metrics, title=None, axis=alt.Axis(labelLimit=220))
    offset = alt.YOffset("method:N", sort=methods)
    tooltip = ["method", "metric", *(alt.Tooltip(f"{c}:Q", format=".2f")
                                     for c in ("value", "low", "high", "chance", "majority")), "reading"]
    base = alt.Chart(frame)
    bars = base.mark_bar().encode(
        x=alt.X("value:Q", title="percent (bar: value · black line: 95 % interval)"), y=y, yOffset=offset,
        color=alt.condition("datum.at_chance", alt.value(GREY),
                            alt.Color("method:N", sort=methods, title="method",
                                      scale=alt.Scale(scheme="tableau10"))),
        opacity=alt.Opacity("reading:N", title="95 % interval",
                            scale=alt.Scale(domain=list(OPACITY), range=list(OPACITY.values()))),
        tooltip=tooltip)
    intervals = base.transform_filter("isValid(datum.low) && isValid(datum.high)").mark_rule(
        color="black", strokeWidth=2).encode(x="low:Q", x2="high:Q", y=y, yOffset=offset, tooltip=tooltip)
    levels = alt.Chart(reference_levels(frame)).mark_tick(thickness=2, size=BAR * len(methods)).encode(
        x="at:Q", y=y,
        color=alt.Color("level:N", title="reference level",
                        scale=alt.Scale(domain=list(LEVELS), range=list(LEVELS.values()))),
        tooltip=["metric", "level", alt.Tooltip("at:Q", format=".2f")])
    height = len(metrics) * (BAR * len(methods) + 8) + LEGENDS
    return (alt.layer(bars, intervals, levels).resolve_scale(color="independent").properties(height=height)
            .configure_legend(orient="bottom", direction="horizontal"))


def curves_chart(frame: pd.DataFrame, title: str) -> alt.Chart:
    """Training curves in long form (`data.run_history`, `data.run_folder_history`: metric, step, value) as
    one line per metric against the step, points marked where there are few (a validation every N steps)."""
    metrics = sorted(frame["metric"].unique())
    sparse = frame.groupby("metric")["step"].count().max() <= 50
    return alt.Chart(frame).mark_line(point=bool(sparse)).encode(
        x=alt.X("step:Q", title="step"), y=alt.Y("value:Q", title=title, scale=alt.Scale(zero=False)),
        color=alt.Color("metric:N", sort=metrics, title=None, legend=alt.Legend(orient="bottom",
                                                                               labelLimit=320)),
        tooltip=["metric", "step", alt.Tooltip("value:Q", format=".4f")]).properties(height=260)
