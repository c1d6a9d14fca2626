"""Hourglass analysis of Beauty's RQ-VAE SIDs (no retriever)."""
from configs import beauty


def get_config():
    c = beauty.get_config()
    c.stages = ("data", "embeddings", "tokenizer", "sids", "hourglass")
    return c
