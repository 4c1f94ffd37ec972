"""A sweep's report: best (or Pareto) trials, parameter importances, the objective against each searched
setting and over time. Plain files (`summary.json`, `trials.csv`, PNGs) that MLflow and the dashboard show.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import optuna

from flair_core.evaluation import stats
from flair_core.evaluation.records import RecordsError, load_records, outcomes, records_path
from flair_lab.sweeps import SweepConfig, is_surplus, pick_trial

COMPLETE = optuna.trial.TrialState.COMPLETE
STATE_COLOURS = {"COMPLETE": "tab:blue", "PRUNED": "tab:orange", "FAIL": "tab:red", "RUNNING": "tab:gray"}


def importances(study: optuna.Study, config: SweepConfig) -> dict[str, dict[str, float]]:
    """Per objective, fANOVA importances (a random forest's variance decomposition: steadier than Optuna's
    default PED-ANOVA on the dozen trials of a CPU sweep); empty until enough trials completed."""
    complete = study.get_trials(deepcopy=False, states=(COMPLETE,))
    out = {}
    for i, objective in enumerate(config.objectives):
        if len(complete) < 4:
            out[objective.metric] = {}
            continue
        try:
            out[objective.metric] = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
                target=lambda t, i=i: t.values[i])
        except (RuntimeError, ValueError, ZeroDivisionError):  # e.g. every trial scored the same
            out[objective.metric] = {}
    return out


def validation_interval(trial: optuna.trial.FrozenTrial, metric: str) -> dict[str, float] | None:
    """The trial's last validation of `metric`: its bootstrap interval and chance level, read from the trial's
    `val_metrics.jsonl` (none for a trial that never validated or whose folder is gone)."""
    path = Path(trial.user_attrs.get("run_dir", "")) / "val_metrics.jsonl"
    if not trial.user_attrs.get("run_dir") or not path.is_file():
        return None
    lines = path.read_text().splitlines()
    last = json.loads(lines[-1]) if lines else {}
    if f"{metric}_ci_low" not in last:
        return None
    return {"ci_low": last[f"{metric}_ci_low"], "ci_high": last[f"{metric}_ci_high"],
            "chance": last.get(f"{metric}_chance")}


def trial_records(trial: dict, metric: str) -> stats.Outcomes | None:
    """The trial's last validation of `metric` as resampling units, None where it kept no records."""
    _, benchmark, mode, name = metric.split("/")
    path = records_path(Path(trial.get("run_dir") or "") / "validation", benchmark)
    if not trial.get("run_dir") or not path.is_file():
        return None
    try:
        return outcomes(load_records(path), f"{mode}/{name}", str(path))
    except RecordsError:
        return None


def separation(trials: list[dict], objective) -> dict | None:
    """Which finished trials the best one beats beyond noise. Paired where the trials kept their validation's
    per-query records: best − other on the same validation queries, Holm's correction over the comparisons, a
    trial beaten when its adjusted p < 0.05. Otherwise (trials run before records were kept): beaten when its
    value lies outside the best trial's own 95 % interval."""
    scored = [t for t in trials if t["state"] == "COMPLETE" and t["values"]]
    if len(scored) < 2:
        return None
    sign = 1 if objective.direction == "maximize" else -1
    best = max(scored, key=lambda t: sign * t["values"][0])
    others = [t for t in scored if t is not best]
    units = {t["number"]: trial_records(t, objective.metric) for t in scored}
    if units[best["number"]] is not None and all(units[t["number"]] is not None for t in others):
        differences = [stats.paired([units[best["number"]]], [units[t["number"]]]) for t in others]
        adjusted = stats.holm([d.p for d in differences])
        beaten = [t["number"] for t, d, p in zip(others, differences, adjusted, strict=True)
                  if sign * d.value > 0 and p < 0.05]
        rule = f"paired on the same validation queries, Holm over {len(others)} comparisons"
        bound = None
    else:
        if not best.get("interval"):
            return None
        bound = best["interval"]["ci_low"] if sign > 0 else best["interval"]["ci_high"]
        beaten = [t["number"] for t in others if sign * (t["values"][0] - bound) < 0]
        rule = "outside the best trial's own interval (not paired: some trials kept no per-query records)"
    within = [t["number"] for t in others if t["number"] not in beaten]
    return {"best": best["number"], "bound": bound, "beaten": beaten, "within": within, "rule": rule,
            "text": f"trial {best['number']} beats {len(beaten)} of {len(others)} other complete trials "
                    f"beyond noise ({rule}); {len(within)} are not separable from it"}


def summarize(study: optuna.Study, config: SweepConfig) -> dict:
    trials = [t for t in study.get_trials(deepcopy=False) if not is_surplus(t)]
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    summary = {"study": config.study, "objectives": [o.model_dump() for o in config.objectives],
               "states": counts, "importances": importances(study, config), "best": None, "pareto": []}
    if any(t.state == COMPLETE for t in trials):
        best = pick_trial(study, config)
        summary["best"] = {"number": best.number, "values": best.values, "params": best.params}
        if len(config.objectives) > 1:
            summary["pareto"] = [{"number": t.number, "values": t.values, "params": t.params}
                                 for t in sorted(study.best_trials, key=lambda t: t.number)]
    summary["trials"] = [{"number": t.number, "state": t.state.name, "values": t.values, "params": t.params,
                          "last_step": t.last_step,
                          "seconds": t.duration.total_seconds() if t.duration else None,
                          "started": t.datetime_start.isoformat() if t.datetime_start else None,
                          "interval": validation_interval(t, config.objectives[0].metric),
                          "run_dir": t.user_attrs.get("run_dir")}
                         for t in trials]
    if len(config.objectives) == 1:
        summary["separation"] = separation(summary["trials"], config.objectives[0])
    return summary


def plot_objective_vs_params(summary: dict, config: SweepConfig, out: Path) -> list[Path]:
    """One scatter per searched setting (finished trials; pruned ones at their last reported value)."""
    paths = []
    objective = config.objectives[0].metric
    for key in config.space:
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        for trial in summary["trials"]:
            if key in trial["params"] and trial["values"]:
                value = trial["params"][key]
                _point(ax, str(value) if isinstance(value, str | bool) else value, trial)
        ax.set_xlabel(key)
        ax.set_ylabel(objective.split("/", 1)[-1], fontsize=8)
        ax.set_title(f"{objective.split('/')[1]} vs {key}", fontsize=9)
        fig.tight_layout()
        path = out / f"objective_vs_{key.replace('.', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _point(ax, x, trial: dict) -> None:
    """One trial's objective, with its 95 % validation interval as an error bar when known."""
    y = trial["values"][0]
    colour = STATE_COLOURS.get(trial["state"], "black")
    interval = trial.get("interval")
    if interval:
        ax.errorbar([x], [y], yerr=[[y - interval["ci_low"]], [interval["ci_high"] - y]], fmt="o",
                    color=colour, markersize=4, elinewidth=1, capsize=2)
    else:
        ax.scatter([x], [y], color=colour, s=22)


def plot_importances(summary: dict, out: Path) -> Path | None:
    values = next(iter(summary["importances"].values()), {})
    if not values:
        return None
    fig, ax = plt.subplots(figsize=(4.5, 0.5 + 0.45 * len(values)))
    names = list(values)[::-1]
    ax.barh(names, [values[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (fANOVA, normalised)")
    fig.tight_layout()
    path = out / "importances.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_history(summary: dict, config: SweepConfig, out: Path) -> Path:
    """Single objective: the objective per trial number; several: the first two objectives and the front."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    if len(config.objectives) > 1:
        xs = [t["values"][0] for t in summary["trials"] if t["state"] == "COMPLETE"]
        ys = [t["values"][1] for t in summary["trials"] if t["state"] == "COMPLETE"]
        ax.scatter(xs, ys, color="tab:gray", s=18, label="trials")
        front = sorted(summary["pareto"], key=lambda t: t["values"][0])
        ax.plot([t["values"][0] for t in front], [t["values"][1] for t in front], "o-", color="tab:red",
                label="Pareto front")
        ax.set_xlabel(config.objectives[0].metric.split("/", 1)[-1], fontsize=8)
        ax.set_ylabel(config.objectives[1].metric.split("/", 1)[-1], fontsize=8)
        ax.legend(fontsize=7)
        name = "pareto.png"
    else:
        for trial in summary["trials"]:
            if trial["values"]:
                _point(ax, trial["number"], trial)
        ax.set_xlabel("trial")
        ax.set_ylabel(config.objectives[0].metric.split("/", 1)[-1], fontsize=8)
        name = "history.png"
    fig.tight_layout()
    path = out / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(study: optuna.Study, config: SweepConfig) -> tuple[dict, list[Path]]:
    out = Path(config.report_dir) / config.study
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(study, config)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    with open(out / "trials.csv", "w", newline="") as f:
        writer = csv.writer(f)
        names = [o.metric for o in config.objectives]
        writer.writerow(["number", "state", *names, "ci_low", "ci_high", "chance", *config.space, "last_step",
                         "seconds"])
        for t in summary["trials"]:
            values = t["values"] or [None] * len(names)
            interval = t["interval"] or {}
            writer.writerow([t["number"], t["state"], *values, interval.get("ci_low"),
                             interval.get("ci_high"), interval.get("chance"),
                             *(t["params"].get(k) for k in config.space), t["last_step"], t["seconds"]])
    files = [out / "summary.json", out / "trials.csv", plot_history(summary, config, out),
             *plot_objective_vs_params(summary, config, out)]
    if (path := plot_importances(summary, out)) is not None:
        files.append(path)
    return summary, files
