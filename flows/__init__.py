"""The Prefect flows (pretrain-eval, sweep, the equal-budget study): the only package that imports Prefect
(tests/test_layers.py), thin shells over the `flair` CLI and flair_lab."""
