"""Residual quantization: pure kernels, k-means, RQ-KMeans and the RQ-VAE."""
from rqsid_jax.quantization.kernels import (
    decode, level_usage, nearest_code, residual_encode, rq_losses, squared_distances, straight_through)
from rqsid_jax.quantization.kmeans import kmeans, kmeans_plusplus, rq_kmeans

__all__ = ["decode", "level_usage", "nearest_code", "residual_encode", "rq_losses", "squared_distances",
           "straight_through", "kmeans", "kmeans_plusplus", "rq_kmeans"]
