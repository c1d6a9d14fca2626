"""Whole-config validation, run before the workdir is touched.

Every value that can be checked without the data is checked here, so an invalid config stops
with one line naming the field and leaves a finished workdir (and its config.json) as it was.
Data-dependent checks (e.g. a codebook larger than the catalogue) stay with their stage.
"""
from __future__ import annotations

import os

import ml_collections

from rqsid_jax.data.dataset import MAX_HISTORY
from rqsid_jax.errors import ConfigError
from rqsid_jax.stages import STAGES


def load_config_file(path: str, lock: bool = True) -> ml_collections.ConfigDict:
    """get_config() of an experiment file (configs/*.py), loaded by path and locked (a mistyped
    field fails) as the launcher's --config does. Configs are files, not an installed package;
    one derived from another loads it with lock=False, then changes it."""
    import importlib.util

    if not os.path.exists(path):
        raise ConfigError(f"{path}: config file not found")
    spec = importlib.util.spec_from_file_location(f"rqsid_config_{os.path.splitext(os.path.basename(path))[0]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    if lock:
        config.lock()
    return config

POSITIVE = {
    "rqvae": ("num_steps", "batch_size", "checkpoint_every", "log_every", "latent_dim", "levels", "min_usage",
              "revive_sample"),
    "rqkmeans": ("levels", "iters"),
    "retriever": ("num_steps", "batch_size", "checkpoint_every", "log_every", "d_model", "num_heads", "head_dim",
                  "mlp_dim", "encoder_layers", "decoder_layers", "max_history", "eval_beam", "num_user_tokens"),
    "evaluation": ("beam", "batch_size"),
    "baseline": ("d_model", "num_heads", "head_dim", "mlp_dim", "layers", "max_len", "batch_size", "num_epochs",
                 "eval_every_epochs", "log_every", "negatives"),
}
NON_NEGATIVE = {
    "rqvae": ("revive_every", "kmeans_iters"),
    "retriever": ("warmup_steps", "eval_every", "eval_users", "patience"),
    "evaluation": ("given_layer1_users", "invalid_users"),
    "baseline": ("patience", "warmup_steps"),
}
CHOICES = {
    "tokenizer": ("rqvae", "rqkmeans"),
    "sid_collisions": ("token", "reassign"),
    "rqvae.optimizer": ("adamw", "adam", "adagrad"),
    "retriever.loss": ("ce", "focal", "mile"),
    "retriever.encoder_input": ("tokens", "items"),
    "retriever.lr_schedule": ("inverse_sqrt", "cosine"),
    "retriever.augment": ("prefixes", "subsequences"),
    "baseline.loss": ("ce", "sampled_ce", "bce"),
    "baseline.lr_schedule": ("constant", "cosine"),
}
FRACTIONS = ("retriever.label_smoothing", "retriever.final_lr_fraction", "baseline.dropout")  # in [0, 1)


def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        if node is None or part not in node:
            return None
        node = node[part]
    return node


def validate_config(config) -> None:
    """Raises ConfigError naming the first invalid field."""
    stages = _get(config, "stages")
    if stages is not None:
        # --config.stages=a,b parses as the one name 'a,b': without this check nothing ran
        unknown = [x for x in ([stages] if isinstance(stages, str) else stages) if x not in STAGES]
        if unknown:
            raise ConfigError(f"stages={stages!r}: unknown {unknown}; stages are {list(STAGES)} "
                              f"(a subset: --stages=data,baseline or --config.stages=\"('data','baseline')\")")
    for section, fields in POSITIVE.items():
        for f in fields:
            v = _get(config, f"{section}.{f}")
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"{section}.{f}={v!r} must be a positive integer")
    for section, fields in NON_NEGATIVE.items():
        for f in fields:
            v = _get(config, f"{section}.{f}")
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ConfigError(f"{section}.{f}={v!r} must be a non-negative integer")
    for dotted, allowed in CHOICES.items():
        v = _get(config, dotted)
        if v is not None and v not in allowed:
            raise ConfigError(f"{dotted}={v!r} is not one of {allowed}")
    for dotted in FRACTIONS:
        v = _get(config, dotted)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1):
            raise ConfigError(f"{dotted}={v!r} must be in [0, 1)")
    for dotted in ("retriever.max_history", "baseline.max_len"):
        v = _get(config, dotted)
        if v is not None and v > MAX_HISTORY:  # validation and test histories hold at most this many
            raise ConfigError(f"{dotted}={v!r} exceeds the split's history cap of {MAX_HISTORY} items")
    cb = _get(config, "rqvae.codebook_size")
    if cb is not None and cb < 2:
        raise ConfigError(f"rqvae.codebook_size={cb!r}: need at least 2 codes")
    for dotted in ("retriever.learning_rate", "baseline.learning_rate"):
        lr = _get(config, dotted)
        if lr is not None and not lr > 0:
            raise ConfigError(f"{dotted}={lr!r} must be positive")
    variants, top_ks = _get(config, "ablation.variants"), _get(config, "hourglass.top_ks")
    if variants is not None and top_ks is not None and "ablation" in (stages or ()):
        from rqsid_jax.ablation import variant_retriever_config  # imports JAX: only when there is one to check
        for v in variants:
            variant_retriever_config(config.retriever, config.ablation, v, tuple(top_ks))
    for section in ("retriever", "baseline"):
        dtype = _get(config, f"{section}.dtype")
        if dtype is not None:
            from rqsid_jax.retrieval import precision
            try:  # the one dtype check, shared with the models' constructors
                precision.resolve(dtype)
            except ValueError as e:
                raise ConfigError(f"{section}.{e}") from None
