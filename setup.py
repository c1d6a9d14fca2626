"""rqsid_jax: generative retrieval with residual-quantization semantic IDs (JAX/Flax)."""
from setuptools import find_packages, setup

setup(
    name="rqsid_jax",
    version="0.1.0",
    description="TIGER-style generative retrieval with RQ semantic IDs and hourglass analysis, in JAX/Flax NNX",
    packages=find_packages(include=["rqsid_jax", "rqsid_jax.*"]),
    python_requires=">=3.10",
    # Pinned to the versions that install on the project's machines (see ../shared/DESIGN.md).
    install_requires=[
        "jax==0.10.2",
        "jaxlib==0.10.2",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "ml_collections==1.1.0",
        "absl-py>=2.1",
        "numpy>=1.26",
        "scipy>=1.11",
        # TFDS is used without TensorFlow: array_record files read by tfds.data_source.
        "tensorflow-datasets==4.9.10",
        "importlib_resources>=6",
        "array_record>=0.8",
        "grain==0.2.18",
        "wordllama==0.4.0.post1",
        "matplotlib>=3.8",
        "tqdm>=4.66",
        # TensorBoard event files without TensorFlow.
        "tensorboardX>=2.6",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6"],
        "bench": ["faiss-cpu"],
    },
)
