"""Beauty counterpart of the hourglass paper's Table 2: the retriever trained once per variant
(cross-entropy, focal, MiLe on the baseline SIDs; layer 2 removed; top@K removal) with one
budget, evaluated on the same test users.

Upstream stages are configured exactly as in beauty.py, so a workdir that already holds
beauty.py's data..hourglass stages reuses them. The budget is sized for this project's 2-core
CPU (~1 epoch per variant, ~15 min each); on an accelerator raise retriever.num_steps.
"""
import os

from rqsid_jax.config_check import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(__file__), "beauty.py"), lock=False)
    c.stages = ("data", "embeddings", "tokenizer", "sids", "hourglass", "ablation")
    # Equal budgets, no model selection: every variant is scored at its last step.
    c.retriever.update(num_steps=500, eval_every=0, checkpoint_every=100, warmup_steps=150)
    c.ablation.variants = ("baseline", "focal", "mile", "remove_layer2", "top@20", "top@100")
    c.ablation.test_users = 5000
    return c
