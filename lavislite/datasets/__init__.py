"""Datasets: builders (config -> splits) and torch Datasets with their collaters."""

from lavislite.datasets.builders import dataset_zoo, load_dataset

__all__ = ["dataset_zoo", "load_dataset"]
