"""Amazon Sports and Outdoors (no item text: collaborative embeddings from training interactions)."""
import os

from rqsid_jax.config_check import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(__file__), "beauty.py"), lock=False)
    c.dataset = "sports"
    c.embeddings.method = "collaborative"
    c.embeddings.dim = 64
    return c
