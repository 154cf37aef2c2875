"""The demo's encoders load and run with the network unavailable."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from gradtune.embeddings import encoders


class NetworkUsed(AssertionError):
    pass


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise NetworkUsed(f"network access attempted: {args[:2]}")

    for name in ("create_connection", "getaddrinfo", "gethostbyname"):
        monkeypatch.setattr(socket, name, refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    # load the encoders afresh, so their loading runs under the patch too
    encoders._load_minilm.cache_clear()
    encoders._load_effnet.cache_clear()
    yield
    encoders._load_minilm.cache_clear()
    encoders._load_effnet.cache_clear()


def test_encoders_run_with_sockets_refused(no_network):
    texts = encoders.encode_texts(["a good film", "a dull film"], progress=False)
    images = encoders.encode_images(np.zeros((2, 28, 28), np.uint8), progress=False)
    assert texts.shape == (2, 384) and np.isfinite(texts).all()
    assert images.shape == (2, 1280) and np.isfinite(images).all()
