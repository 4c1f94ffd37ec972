"""Prefect flows and platform adapters: thin shells over flair_core and its CLI."""
