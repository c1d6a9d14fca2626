"""Retriever recipe search on Beauty validation (python -m rqsid_jax.recipe_search).

A greedy search: each variant changes one thing from its parent, at the same step budget, seed
and validation users. The budget (1,200 steps x 256 = ~2.3 epochs of prefixes) is under a third
of what the 90-minute main command trains; it ranks recipes, it does not predict final numbers.
"""
import os

import ml_collections

from rqsid_jax.config_check import load_config_file


def _v(description, parent="", sids="token", **retriever):
    return dict(description=description, parent=parent, sids=sids, retriever=retriever)


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # data, embeddings, tokenizer, SIDs and retriever defaults
    c.pipeline = load_config_file(os.path.join(os.path.dirname(__file__), "beauty.py"), lock=False)
    # The search starts from the recipe beauty.py had before it (beauty.py now holds the winner):
    # spelled here so that every variant's config, and so the table, stays what was run.
    c.pipeline.sid_collisions = "token"
    c.pipeline.retriever.update(encoder_input="tokens", lr_schedule="inverse_sqrt", augment="prefixes",
                                learning_rate=0.002, num_user_tokens=2000, label_smoothing=0.0)
    c.budget = ml_collections.ConfigDict(dict(num_steps=1200, batch_size=256, warmup_steps=200,
                                              checkpoint_every=200, log_every=100))
    c.val_users = 5000
    c.val_seed = 0
    c.beam = 20
    c.reference = "items"
    c.variants = dict(
        # beauty.py's recipe before this search, but for the item-level encoder input (~3x faster)
        items=_v("collision token, item input, inverse-sqrt 2e-3", encoder_input="items"),
        reassign=_v("collision-free SIDs (3 tokens)", "items", "reassign", encoder_input="items"),
        cosine=_v("cosine decay to 0", "reassign", "reassign", encoder_input="items", lr_schedule="cosine"),
        cosine_lr4e3=_v("cosine, peak 4e-3", "cosine", "reassign", encoder_input="items", lr_schedule="cosine",
                        learning_rate=0.004),
        subsequences=_v("every contiguous window (GRID)", "cosine", "reassign", encoder_input="items",
                        lr_schedule="cosine", augment="subsequences"),
        no_user=_v("no user token (1 shared bucket)", "cosine", "reassign", encoder_input="items",
                   lr_schedule="cosine", num_user_tokens=1),
        smooth=_v("label smoothing 0.1", "cosine", "reassign", encoder_input="items", lr_schedule="cosine",
                  label_smoothing=0.1),
        tokens=_v("token-level encoder input (TIGER)", "cosine", "reassign", encoder_input="tokens",
                  lr_schedule="cosine"),
    )
    c.order = ("items", "reassign", "cosine", "cosine_lr4e3", "subsequences", "no_user", "smooth", "tokens")
    return c
