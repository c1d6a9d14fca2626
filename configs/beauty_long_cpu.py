"""Beauty, beauty.py's recipe at the longest schedule one 3-hour CPU session completes.

Why a second long config: beauty_long.py's 30,000 steps take ~9 h on this project's 2-core CPU,
and a session's work tree (so its workdir and checkpoints) is laid anew every 3 hours, so on this
CPU that run can only ever be seen part-way. This config anneals the same recipe fully within one
session: 6,000 steps x 256 (~1.75 passes over the contiguous windows, 1.76x the main command),
cosine to 0 over that budget, validation every 1,000 steps on 4,000 users, the best checkpoint
(validation NDCG@10) evaluated on test. The SASRec baseline and the evaluation probes are left
out to fit the session (the main command reports both).
"""
import os

from rqsid_jax.config_check import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(__file__), "beauty.py"), lock=False)
    c.stages = ("data", "embeddings", "tokenizer", "sids", "hourglass", "retriever", "evaluation")
    c.retriever.update(num_steps=6000, warmup_steps=500, eval_every=1000, eval_users=4000, patience=5,
                       checkpoint_every=500)
    c.evaluation.update(given_layer1_users=0, invalid_users=0)
    return c
