"""Regenerates the Colab notebooks (python colab/make_notebooks.py from the repo root)."""
import nbformat as nbf

def nb(cells):
    n = nbf.v4.new_notebook()
    n.cells = [nbf.v4.new_markdown_cell(c[1]) if c[0] == "md" else nbf.v4.new_code_cell(c[1]) for c in cells]
    n.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return n

setup = """import os, sys, subprocess
# On Colab: clone and install the library (it is imported, never copied into the notebook).
# RQSID_REPO is the git URL (or path) of your copy of this repository; there is no default.
if "google.colab" in sys.modules and not os.path.exists("rqsid_jax_repo"):
    if not os.environ.get("RQSID_REPO"):
        raise SystemExit("set RQSID_REPO to the git URL of your rqsid_jax repository, e.g. "
                         "os.environ['RQSID_REPO'] = 'https://github.com/<you>/rqsid_jax'")
    subprocess.run(["git", "clone", os.environ["RQSID_REPO"], "rqsid_jax_repo"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "rqsid_jax_repo"], check=True)
    os.chdir("rqsid_jax_repo")
elif os.path.basename(os.getcwd()) == "colab":
    os.chdir("..")  # run from the repository root
sys.path.insert(0, os.getcwd())"""

device = """import jax
# TPU runtime when present (Colab: Runtime > Change runtime type > TPU), CPU otherwise.
print(jax.default_backend(), jax.device_count(), "devices:", jax.devices())"""

quick = nb([
    ("md", "# rqsid_jax quickstart\n\nThe whole pipeline on Amazon Beauty: data → embeddings → RQ-VAE → semantic IDs → hourglass analysis → TIGER retriever → evaluation. Set `RQSID_DATA_DIR` to the directory holding `beauty/sequential_data.txt` (or the raw `reviews_Beauty_5.json.gz`). `RQSID_NOTEBOOK_CONFIG=configs/tiny.py` runs the same cells in seconds (CI does this)."),
    ("code", setup),
    ("code", device),
    ("code", """from rqsid_jax import pipeline

CONFIG = os.environ.get("RQSID_NOTEBOOK_CONFIG", "configs/beauty.py")
WORKDIR = os.environ.get("RQSID_NOTEBOOK_WORKDIR", "runs/quickstart")
config = pipeline.load_config_file(CONFIG)
print(CONFIG, config.dataset, config.data_dir)"""),
    ("code", """results = pipeline.run(config, WORKDIR, progress=False)
list(results)"""),
    ("code", """import json
sid = results["sids"]
print("used codes per level:", sid["used_codes"], "unique 3-token prefixes:", round(sid["unique_prefix_ratio"], 4),
      "largest collision group:", sid["max_collision_group"])
print(json.dumps(results["evaluation"]["test"]["all"], indent=1))"""),
    ("code", """from IPython.display import Markdown, display
display(Markdown(open(os.path.join(WORKDIR, "report.md")).read().split("![")[0]))"""),
])

hg = nb([
    ("md", "# Hourglass analysis of RQ semantic IDs\n\nMeasures the hourglass bottleneck (Kuai et al., EMNLP 2024) on the SIDs of a run, draws the figures, and compares the paper's mitigations. Uses the library's `rqsid_jax.sid` functions directly."),
    ("code", setup),
    ("code", device),
    ("code", """import numpy as np
from rqsid_jax import pipeline
from rqsid_jax.sid import hourglass, mitigations, figures, synthetic

CONFIG = os.environ.get("RQSID_NOTEBOOK_CONFIG", "configs/hourglass_beauty.py")
WORKDIR = os.environ.get("RQSID_NOTEBOOK_WORKDIR", "runs/hourglass")
config = pipeline.load_config_file(CONFIG)
pipeline.run(config, WORKDIR, stages=["data", "embeddings", "tokenizer", "sids"], progress=False)
codes = np.load(os.path.join(WORKDIR, "sids", "codes.npy"))
residuals = np.load(os.path.join(WORKDIR, "sids", "residuals.npy"))
M = config.rqvae.codebook_size
codes.shape"""),
    ("code", """from IPython.display import Markdown, display
from rqsid_jax.sid.report import markdown_table, LAYER_COLS
show = lambda rows, cols=None: display(Markdown(markdown_table(rows, cols or list(rows[0]))))
show(hourglass.layer_metrics(codes, M), LAYER_COLS)"""),
    ("code", """show(hourglass.path_sparsity(codes, M), ["depth", "distinct_prefixes", "possible", "occupancy", "branching_mean", "branching_max"])"""),
    ("code", """show(hourglass.residual_norms(residuals))"""),
    ("code", """from IPython.display import Image, display
out = os.path.join(WORKDIR, "notebook_figures"); os.makedirs(out, exist_ok=True)
for name, path in figures.all_figures(codes, M, out, residuals).items():
    display(Image(path))"""),
    ("code", """rows = []
for s in mitigations.all_mitigations(codes, M, top_ks=tuple(config.hourglass.top_ks)):
    layers = hourglass.layer_metrics(s.sids[:, :-1], M)
    rows.append({"set": s.name, "capacity": s.capacity, "unique": s.unique(), "mean tokens": s.lengths.mean(),
                 "layer-2 gini": layers[1]["gini"] if len(layers) > 1 else None})
show(rows)"""),
    ("code", """syn = synthetic.run(**dict(config.hourglass.synthetic))
show([{"input": k, **{f"L{r['layer']} entropy": r["entropy_bits"] for r in syn[k]["layers"]},
               "layer 2 more concentrated": syn[k]["hourglass"]} for k in ("uniform", "long_tailed")])"""),
])
nbf.write(quick, "colab/quickstart.ipynb")
nbf.write(hg, "colab/hourglass.ipynb")
