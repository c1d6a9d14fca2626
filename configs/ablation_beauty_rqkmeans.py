"""ablation_beauty.py on RQ-KMeans SIDs (residual k-means, no autoencoder): here the token
distribution concentrates with depth (README's tokenizer table), so the hourglass question is
sharper than on RQ-VAE's near-even layers. Same variants, budget and test users."""
import os

from rqsid_jax.config_check import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(__file__), "ablation_beauty.py"), lock=False)
    c.tokenizer = "rqkmeans"
    c.ablation.results_dir = os.path.join(os.path.dirname(c.ablation.results_dir), "ablation_beauty_rqkmeans")
    return c
