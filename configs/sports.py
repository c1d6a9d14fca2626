"""Amazon Sports and Outdoors (no item text: collaborative embeddings from training interactions)."""
from configs import beauty


def get_config():
    c = beauty.get_config()
    c.dataset = "sports"
    c.embeddings.method = "collaborative"
    c.embeddings.dim = 64
    return c
