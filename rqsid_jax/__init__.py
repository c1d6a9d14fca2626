"""rqsid_jax: generative retrieval with residual-quantization semantic IDs."""

__version__ = "0.1.0"
