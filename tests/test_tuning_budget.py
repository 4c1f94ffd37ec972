"""Every method is tuned with the same budget: the four studies in params/tuning/ differ only in the method,
its own settings and the mode its objective is scored in."""

from __future__ import annotations

import pytest

from flair_core.evaluation.headline import promotion_metric
from flair_core.methods import METHODS
from flair_lab.sweeps import load_sweep_config
from tests.helpers.paths import REPO

SHARED_KNOBS = ("train.lr", "train.warmup_steps", "train.weight_decay")


def tuning_configs():
    return {name: load_sweep_config(REPO / "params" / "tuning" / f"{name}.yaml") for name in METHODS}


def budget(config) -> dict:
    """What must be equal across methods: trials, steps and seeds, sampler, pruner, and the shared knobs'
    ranges."""
    return {"n_trials": config.n_trials, "sampler": config.sampler, "seed": config.seed,
            "pruner": config.pruner, "pruner_warmup_steps": config.pruner_warmup_steps,
            "storage": config.storage, "base_params": config.base_params,
            "trial_overrides": config.trial_overrides,
            "shared_space": {k: config.space[k] for k in SHARED_KNOBS}}


def test_every_registered_method_has_a_tuning_study_with_the_same_budget():
    configs = tuning_configs()
    budgets = {name: budget(config) for name, config in configs.items()}
    first = next(iter(budgets.values()))
    for name, other in budgets.items():
        assert other == first, name
    assert len({c.study for c in configs.values()}) == len(configs)  # one study each, no shared trials


@pytest.mark.parametrize("name", list(METHODS))
def test_each_study_trains_its_method_and_scores_it_in_its_own_mode(name):
    config = tuning_configs()[name]
    assert config.base_overrides == (f"method.name={name}",)  # its trials and its exported recipe
    assert [o.metric for o in config.objectives] == [promotion_metric(METHODS[name].primary_mode)]
    own = [k for k in config.space if k not in SHARED_KNOBS]
    assert own, f"{name} searches none of its own settings"


def test_flairs_study_keeps_both_loss_terms():
    """The paper's FLAIR trains TCS + MPS: the searched weight never reaches TCS alone or MPS alone."""
    space = tuning_configs()["flair"].space["method.settings.tcs_weight"]
    assert 0 < space.low and space.high < 1
