"""The training engine: one distributed loop for every method."""
