"""Evaluation: benchmarks, metrics and reports (the models score with `flair_core.scores`)."""

# Each headline metric `m` is reported with `m_ci_low`, `m_ci_high` (a seeded 95 % bootstrap interval over
# clusters of queries or images), `m_chance` (a random ranking's or random class's expected value) and, for
# segmentation and classification, `m_majority` (always the most frequent class). Here, free of torch, so that
# reporting code (compare, flows, dashboard) reads the same names the metrics write.
CI_LOW, CI_HIGH, CHANCE, MAJORITY = "_ci_low", "_ci_high", "_chance", "_majority"
UNCERTAINTY = (CI_LOW, CI_HIGH, CHANCE, MAJORITY)
