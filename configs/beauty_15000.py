"""Beauty, beauty.py's recipe annealed over 15,000 steps: the longest run one CPU session holds.

15,000 steps x 256 (~1.9x the main command), cosine to 0 over that budget, validation every
1,000 steps on 4,000 users, the best checkpoint (validation NDCG@10) evaluated on test.
configs/beauty_long.py's 30,000 steps take ~3.2 h on this project's 2-core AVX512-BF16 CPU, more
than a working session, and its workdir does not outlive the session; a schedule cut short
leaves the learning rate high, so this run anneals fully in ~2 h instead. The SASRec baseline
and the evaluation probes are left out (the main command reports both).
"""
import os

from rqsid_jax.config_check import load_config_file


def get_config():
    # beauty_6000.py's run (stages, validation, evaluation) on a schedule 2.5x as long
    c = load_config_file(os.path.join(os.path.dirname(__file__), "beauty_6000.py"), lock=False)
    c.retriever.update(num_steps=15000, warmup_steps=1000)
    return c
