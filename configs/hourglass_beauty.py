"""Hourglass analysis of Beauty's RQ-VAE SIDs (no retriever)."""
import os

from rqsid_jax.config_check import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(__file__), "beauty.py"), lock=False)
    c.stages = ("data", "embeddings", "tokenizer", "sids", "hourglass")
    return c
