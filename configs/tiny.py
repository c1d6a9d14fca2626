"""Seconds on CPU: the whole pipeline on a generated raw-format dataset (tests, notebooks, CI)."""
from configs import beauty
from rqsid_jax.data.tiny import ensure_tiny_dataset


def get_config():
    c = beauty.get_config()
    c.dataset = "tiny"
    c.data_dir = ensure_tiny_dataset()  # raw Amazon-format files, written once per machine
    c.embeddings.dim = 64
    r = c.rqvae
    r.hidden_dims = (64, 32)
    r.latent_dim = 8
    r.levels = 3
    r.codebook_size = 16
    r.batch_size = 64
    r.num_steps = 60
    r.revive_every = 20
    r.log_every = 20
    r.checkpoint_every = 20
    r.kmeans_iters = 5
    c.rqkmeans.codebook_size = 16
    c.hourglass.top_ks = (2, 4)
    c.hourglass.synthetic = dict(n=2000, dim=8, levels=3, codebook_size=16, clusters=50, zipf_a=1.2, seed=0,
                                 iters=5)
    return c
