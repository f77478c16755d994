"""Data: the Fitzpatrick17k manifest, the synthetic demo set, parquet shards, level-1 sampling, Ray Data streams."""


class DataError(ValueError):
    """Bad input data: the message names the file, row or field and what was expected."""
