"""Amazon Beauty with TIGER's settings: the README's main job."""
import os

import ml_collections

from rqsid_jax.ablation import default_config as ablation_config
from rqsid_jax.baseline.sasrec import default_config as sasrec_config
from rqsid_jax.quantization.train import default_config as rqvae_config
from rqsid_jax.retrieval.train import default_config as retriever_config


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.dataset = "beauty"
    c.data_dir = os.environ.get("RQSID_DATA_DIR", "../shared/data/amazon2014")  # or --config.data_dir=...
    c.data_format = "auto"  # auto | p5 | raw | user
    c.interactions = ""  # data_format=user: 'user,item[,timestamp]' file
    c.min_count = 5  # k-core for raw input
    c.seed = 0
    c.stages = ("data", "embeddings", "tokenizer", "sids", "hourglass", "retriever", "evaluation", "baseline")

    c.embeddings = ml_collections.ConfigDict()
    c.embeddings.method = "auto"  # auto | wordllama | sentence_transformers | npy | collaborative | given
    c.embeddings.model_name = "sentence-transformers/sentence-t5-base"
    c.embeddings.npy_path = ""
    c.embeddings.dim = 256
    c.embeddings.text_fields = "separate"  # title and attributes embedded separately (see data/text.py)

    c.tokenizer = "rqvae"  # rqvae | rqkmeans
    c.rqvae = rqvae_config()
    c.rqkmeans = ml_collections.ConfigDict({"levels": 3, "codebook_size": 256, "iters": 25})
    # 'token': TIGER's extra collision token (L+1 tokens); 'reassign': items sharing their first
    # L-1 codes get distinct last codes by a minimum-cost assignment (L tokens, sid/assign.py).
    # Set with the retriever recipe below.

    c.hourglass = ml_collections.ConfigDict()
    c.hourglass.top_ks = (10, 20, 50, 100)
    c.hourglass.head_share = 0.5
    c.hourglass.run_synthetic = True
    c.hourglass.synthetic = ml_collections.ConfigDict(dict(
        n=20000, dim=32, levels=3, codebook_size=64, clusters=500, zipf_a=1.2, seed=0, iters=20))

    c.retriever = retriever_config()
    c.retriever.sids = "baseline"  # or remove_layer2 | swap12 | top@K (K in hourglass.top_ks) | collision_token
    # The recipe the validation search chose (configs/recipe_beauty.py, README): item-level encoder
    # input (one position per item, ~3x faster than one per token), cosine decay, every contiguous
    # window of a history as a training example (GRID), collision-free 3-token SIDs.
    # num_steps is sized so the whole command fits 90 min on this project's 2-core AVX512-BF16 CPU,
    # where the bfloat16 path trains at ~0.4 s a step (8000 x 256 windows, ~2.3 passes). On a CPU
    # without hardware bfloat16 (e.g. AMD Zen 3: float32, ~1 s a step) that is ~2.5 h: use
    # --config.retriever.num_steps=3400 there. TIGER trained far longer; on an accelerator raise
    # it (e.g. --config.retriever.num_steps=30000, or configs/beauty_long.py).
    c.sid_collisions = "reassign"
    c.retriever.update(encoder_input="items", lr_schedule="cosine", augment="subsequences",
                       num_steps=8000, eval_every=500, eval_users=2000, learning_rate=0.002,
                       warmup_steps=500, patience=0, checkpoint_every=500)

    c.evaluation = ml_collections.ConfigDict()
    c.evaluation.splits = ("test",)  # validation is tracked during training
    c.evaluation.beam = 50  # Recall/NDCG up to @50
    c.evaluation.batch_size = 256
    c.evaluation.given_layer1_users = 4000  # the paper's Table 1 probe on this many test users (0 = skip)
    c.evaluation.invalid_users = 1000  # unconstrained decoding on this many test users (0 = skip)

    # SASRec on the same split and metrics (stage 'baseline'): does generative retrieval win?
    c.baseline = sasrec_config()

    # Retriever variants for Table 2 (stage 'ablation', not in the default stages; see
    # configs/ablation_beauty.py). Every variant trains with the retriever settings above.
    c.ablation = ablation_config()
    return c
