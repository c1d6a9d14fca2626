"""ablation_beauty.py's variants on Amazon Sports and Outdoors (sports.py: collaborative item
embeddings, no item text), to see whether the Beauty answer holds on a second dataset."""
import os

from rqsid_jax.config_check import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(__file__), "ablation_beauty.py"), lock=False)
    sports = load_config_file(os.path.join(os.path.dirname(__file__), "sports.py"), lock=False)
    c.dataset, c.embeddings = sports.dataset, sports.embeddings
    c.ablation.results_dir = os.path.join(os.path.dirname(c.ablation.results_dir), "ablation_sports")
    return c
