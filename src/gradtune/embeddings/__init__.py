"""Cached features: the bundle format and capturing a model's last-layer inputs."""

from gradtune.embeddings.bundle import BundleError, EmbeddingBundle, SplitView, load_bundle
from gradtune.embeddings.capture import capture_features

__all__ = ["EmbeddingBundle", "SplitView", "BundleError", "load_bundle", "capture_features"]
