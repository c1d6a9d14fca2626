"""The stage graph: stages in run order, the config sections each depends on, its upstream
stages. Plain data, shared by the pipeline and the report."""

STAGES = ("data", "embeddings", "tokenizer", "sids", "hourglass", "retriever", "evaluation", "baseline", "ablation")
# Which config sections each stage depends on (besides its upstream stages).
STAGE_KEYS = {
    "data": ("dataset", "data_dir", "data_format", "interactions", "min_count"),
    "embeddings": ("embeddings", "seed"),  # the collaborative method draws from the seed
    "tokenizer": ("tokenizer", "rqvae", "rqkmeans", "seed"),
    "sids": ("sid_collisions",),
    "hourglass": ("hourglass",),
    "retriever": ("retriever",),
    "evaluation": ("evaluation",),
    "baseline": ("baseline",),
    "ablation": ("ablation", "retriever", "evaluation"),
}
# Config fields that say where results are kept, not what they are: left out of fingerprints, so
# setting them never reruns a finished stage.
NOT_FINGERPRINTED = {"ablation": ("results_dir",)}
UPSTREAM = {"data": (), "embeddings": ("data",), "tokenizer": ("embeddings",), "sids": ("tokenizer",),
            "hourglass": ("sids",), "retriever": ("sids", "hourglass"), "evaluation": ("retriever",),
            "baseline": ("data",), "ablation": ("sids", "hourglass")}
