"""The CUDA checks: every test here is marked ``cuda`` and skipped, with the reason, where
torch sees no CUDA device. ``scripts/device-check`` runs them on a GPU machine.

``GRADTUNE_CUDA_TESTS_ON_CPU=1`` runs them on the CPU instead (gloo in place of NCCL), to
check the tests themselves on a machine without a GPU; that proves nothing about CUDA.
"""

from __future__ import annotations

import os

import pytest
import torch

ON_CPU = os.environ.get("GRADTUNE_CUDA_TESTS_ON_CPU") == "1"


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.cuda)
            if not ON_CPU and not torch.cuda.is_available():
                item.add_marker(pytest.mark.skip(
                    reason=f"no CUDA device (torch {torch.__version__}, built with CUDA "
                           f"{torch.version.cuda}); run scripts/device-check on a GPU machine"))


@pytest.fixture
def device() -> torch.device:
    return torch.device("cpu") if ON_CPU else torch.device("cuda")
