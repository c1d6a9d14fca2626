"""Seconds on CPU: the whole pipeline on a generated raw-format dataset (tests, notebooks, CI)."""
import os

from rqsid_jax.config_check import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(__file__), "beauty.py"), lock=False)
    c.dataset = "tiny"
    # No directory: the data layer generates the raw Amazon-format files on first use (once per
    # machine, data/tiny.py); loading this config writes nothing.
    c.data_dir = ""
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
    t = c.retriever
    t.update(d_model=32, num_heads=2, head_dim=16, mlp_dim=64, encoder_layers=1, decoder_layers=1,
             batch_size=64, num_steps=60, warmup_steps=10, eval_every=30, eval_users=0, eval_beam=10,
             checkpoint_every=30, log_every=10, patience=0, data_threads=1, max_history=5,
             bucket_items=(2,))  # two encoder shapes: fewer compiles
    c.evaluation.beam = 20
    c.baseline.update(d_model=16, num_heads=2, head_dim=8, mlp_dim=32, layers=1, batch_size=64, num_epochs=4,
                      eval_every_epochs=2, log_every=2, bucket_lengths=(4,))
    c.ablation.update(variants=("baseline", "mile", "top@2"), test_users=0, beam=20, ks=(1, 5, 10, 20))
    c.evaluation.invalid_users = 50
    c.evaluation.given_layer1_users = 100
    return c
