"""Beauty, beauty.py's recipe trained towards convergence (issue 12's long config).

30,000 steps x 256 (~9x the main command's budget; ~9 h on this project's 2-core CPU, minutes
on an accelerator), cosine-annealed over that budget, validation every 1,000 steps on 4,000
users, stopping after 5 evaluations without improvement. Resumable: rerun the same command
after a kill and it continues from the last checkpoint (retriever/checkpoints/last).
"""
import os

from rqsid_jax.config_check import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(__file__), "beauty.py"), lock=False)
    c.retriever.update(num_steps=30000, warmup_steps=1000, eval_every=1000, eval_users=4000, patience=5,
                       checkpoint_every=500)
    return c
