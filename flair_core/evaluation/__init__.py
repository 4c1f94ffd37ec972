"""Evaluation: benchmarks, metrics and reports (the models score with `flair_core.scores`)."""

# Each recall metric `m` is reported with `m_ci_low`, `m_ci_high` (a seeded 95 % bootstrap interval over
# queries) and `m_chance` (a random ranking's expected value). Here, free of torch, so that reporting code
# (compare, flows, dashboard) reads the same names the metrics write.
CI_LOW, CI_HIGH, CHANCE = "_ci_low", "_ci_high", "_chance"
UNCERTAINTY = (CI_LOW, CI_HIGH, CHANCE)
