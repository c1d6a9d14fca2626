"""Data layer: readers for raw Amazon 2014, P5-preprocessed and user-supplied data; TIGER splits."""
from rqsid_jax.data.dataset import ItemTable, SequenceDataset, Split, hash_user
from rqsid_jax.data.readers import load_dataset, read_p5, read_raw_amazon, read_user_interactions

__all__ = [
    "ItemTable", "SequenceDataset", "Split", "hash_user",
    "load_dataset", "read_p5", "read_raw_amazon", "read_user_interactions",
]
