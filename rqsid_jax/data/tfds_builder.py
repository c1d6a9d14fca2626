"""TFDS builder `amazon_reviews` (configs beauty / sports / toys) reading a manual directory.

It writes array_record files, so `tfds.data_source('amazon_reviews/beauty', data_dir=...)`
reads them without TensorFlow installed. The manual directory holds either the P5 form
(`<config>/sequential_data.txt`, ...) or the raw Amazon 2014 files; both go through the
same readers as the rest of the library, so the splits are identical.
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from rqsid_jax.data.dataset import MAX_HISTORY
from rqsid_jax.data.readers import load_dataset


class AmazonReviews(tfds.core.GeneratorBasedBuilder):
    """Amazon 2014 5-core sequences with TIGER's leave-one-out split."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Place the P5 files under <manual_dir>/<config>/ (sequential_data.txt, datamaps.json, "
        "item_meta.jsonl) or the raw reviews_<Category>_5.json.gz and meta_<Category>.json.gz "
        "in <manual_dir>.")
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="beauty", description="Amazon 2014 Beauty"),
        tfds.core.BuilderConfig(name="sports", description="Amazon 2014 Sports and Outdoors"),
        tfds.core.BuilderConfig(name="toys", description="Amazon 2014 Toys and Games"),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "user_id": tfds.features.Text(),
                "user_token": np.int32,
                # 0-based item indices in the dataset's item order; history oldest first.
                "history": tfds.features.Sequence(np.int32),
                "target": np.int32,
            }),
            supervised_keys=None,
        )

    def _split_generators(self, dl_manager):
        ds = load_dataset(self.builder_config.name, str(dl_manager.manual_dir))
        split = ds.split()
        return {
            "train": self._generate_examples(split, "train"),
            "validation": self._generate_examples(split, "validation"),
            "test": self._generate_examples(split, "test"),
        }

    def _generate_examples(self, split, which):
        for u, user in enumerate(split.user_ids):
            if which == "train":
                # The retriever's training examples (retrieval/input_pipeline.train_examples, "prefixes"):
                # every item after the first of the training part, with the at most MAX_HISTORY
                # items before it.
                seq = split.train[u]
                for i in range(1, len(seq)):
                    yield f"{user}/{i}", {"user_id": user, "user_token": int(split.user_tokens[u]),
                                          "history": np.asarray(seq[max(0, i - MAX_HISTORY):i], np.int32),
                                          "target": int(seq[i])}
                continue
            if which == "validation":
                history, target = split.valid_history[u], split.valid_target[u]
            else:
                history, target = split.test_history[u], split.test_target[u]
            yield user, {"user_id": user, "user_token": int(split.user_tokens[u]),
                         "history": np.asarray(history, np.int32), "target": int(target)}


def build(config: str, manual_dir: str, data_dir: str) -> None:
    """Builds `amazon_reviews/<config>` into `data_dir` as array_record."""
    builder = AmazonReviews(config=config, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
