"""Datasets: the embedded testbed, real preference datasets, and input pipelines."""
