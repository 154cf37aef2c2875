"""Argument types of the command line that check a value against this machine.

Light at import (the parser is built without torch); the check itself imports torch.
"""

from __future__ import annotations

import argparse

__all__ = ["device_arg"]


def device_arg(text: str) -> str:
    """An argparse ``type`` for ``--device``: the name, checked to exist on this machine
    before anything is loaded."""
    from gradtune._errors import GradTuneInputError
    from gradtune._validation import check_device

    try:
        check_device(text, "--device")
    except GradTuneInputError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text
