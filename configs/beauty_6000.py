"""Beauty, beauty.py's recipe annealed over 6,000 steps: the yardstick of the ablation's budget.

6,000 steps x 256 (~1.75 passes over the contiguous windows), cosine to 0 over that budget,
validation every 1,000 steps on 4,000 users, the best checkpoint (validation NDCG@10) evaluated
on test. It ends level with the best of beauty_long.py's 30,000-step cosine (validation Recall@10
0.0603 vs 0.0607), so the ablation configs train each variant on this schedule. ~50 min on this
project's 2-core AVX512-BF16 CPU. The SASRec baseline and the evaluation probes are left out
(the main command reports both).
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
