"""Evaluation: retrieval scoring, metrics and benchmarks."""
