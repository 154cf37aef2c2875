"""Datasets: the GroupedDataset structure and one reader per benchmark."""

from gradtune.data.base import SPLIT_CODES, DatasetNotFoundError, GroupedDataset, split_heldout

__all__ = ["GroupedDataset", "DatasetNotFoundError", "SPLIT_CODES", "split_heldout"]
