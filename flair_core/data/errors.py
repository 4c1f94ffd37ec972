"""Errors raised for bad data; messages are one line naming what is wrong."""


class DataError(ValueError):
    """Input data that cannot be used (missing images, malformed records, unreadable shards)."""
