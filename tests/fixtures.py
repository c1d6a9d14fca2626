"""Small raw Amazon-format fixtures written into a temp dir; experiment configs by name."""
import gzip
import json
import os

from rqsid_jax.config_check import load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def experiment_config(name: str):
    """configs/<name>.py's get_config(), loaded by path like the launcher does, but unlocked:
    tests add and change fields."""
    return load_config_file(os.path.join(ROOT, "configs", f"{name}.py"), lock=False)


def write_raw(tmp_path, reviews, meta_lines, category="Beauty", extra_review_lines=()):
    rpath = tmp_path / f"reviews_{category}_5.json.gz"
    with gzip.open(rpath, "wt") as f:
        for user, asin, t in reviews:
            f.write(json.dumps({"reviewerID": user, "asin": asin, "unixReviewTime": t, "overall": 5.0}) + "\n")
        for line in extra_review_lines:
            f.write(line + "\n")
    mpath = tmp_path / f"meta_{category}.json.gz"
    with gzip.open(mpath, "wt") as f:
        for line in meta_lines:
            f.write(line + "\n")
    return str(rpath), str(mpath)
