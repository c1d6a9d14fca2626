"""Beauty counterpart of the hourglass paper's Table 2 (RQ-VAE SIDs): the retriever trained once
per variant with one budget, evaluated on the same test users, and the paper's claims decided
from the results (ablation/table.md).

Variants: cross-entropy on the collision-free SIDs (baseline), focal and MiLe losses, layer 2
removed, layer 2's top@K tokens removed, layers 1 and 2 swapped, and TIGER's collision token.
The paper's top@K (K = 20, 200, 400, 600 of M = 4096 codes) scaled to this run's 256 codes is
K = 1, 13, 25, 38 (the same shares of layer 2's codebook).

Budget: beauty.py's recipe annealed over 6,000 steps (configs/beauty_6000.py's schedule;
~45 min per variant on this project's 2-core AVX512-BF16 CPU), each variant scored at its last
step (no model selection). The issue asks for a baseline within 10% of its converged validation
Recall@10: beauty_6000.py's run ends at 0.0603 (4,000 users), 99% of beauty_long.py's best
0.0607 (its 30,000-step cosine, plateaued from ~11,000 steps), where the main command's
3,400-step schedule stopped at 88%. The data..sids stages are configured as in beauty.py, so
`--reuse_from=<a beauty.py workdir>` copies them in; use a workdir of its own: hourglass.top_ks
differs, so in beauty.py's workdir the hourglass stage, and after it the retriever, would rerun.
"""
import os

from rqsid_jax.config_check import load_config_file

# round(K * 256 / 4096) for the paper's K = 20, 200, 400, 600 (round half up)
PAPER_TOP_KS = (1, 13, 25, 38)


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(__file__), "beauty.py"), lock=False)
    c.stages = ("data", "embeddings", "tokenizer", "sids", "hourglass", "ablation")
    c.hourglass.top_ks = PAPER_TOP_KS
    # Equal budgets, no model selection: every variant is scored at its last step.
    c.retriever.update(num_steps=6000, warmup_steps=500, eval_every=0, checkpoint_every=500)
    c.ablation.variants = ("baseline", "focal", "mile", "remove_layer2", *(f"top@{k}" for k in PAPER_TOP_KS),
                           "swap12", "collision_token")
    c.ablation.test_users = 0  # all 22,363: the differences the paper reports are a few points of Recall
    # ~45 min per variant on this CPU (42 min of training + 3 of evaluation measured), and a
    # session's workdir does not outlive it: each finished variant's metrics.json and ranks.npz
    # are kept in the repo, so the table is built over sessions.
    c.ablation.results_dir = results_dir("ablation_beauty")
    return c


def results_dir(name: str) -> str:
    """<repo>/results/<name>: where an ablation config keeps its finished variants."""
    return os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, "results", name))
