"""Data: offline TFDS builders (builders.py), dataset resolution (sources.py), Grain pipelines (pipeline.py)."""
