"""JTT's error set and upsampling against direct counts."""

from __future__ import annotations

import numpy as np

from gradtune.finetune.linear import FinetuneConfig
from gradtune.methods import JTTMethod


def test_method_error_set_is_erm_heldout_errors(bundle):
    held = bundle.view("heldout")
    z = held.features @ bundle.head_weight.T + bundle.head_bias
    direct = held.index[np.flatnonzero(z.argmax(1) != held.labels)]
    res = JTTMethod(upweight=3, finetune=FinetuneConfig(epochs=1, reset=True)).fit(bundle, seed=0)
    assert res.diagnostics["error_rows"] == direct.tolist()
    assert res.diagnostics["upsampled_size"] == len(held) + 2 * direct.size
    assert JTTMethod.uses_group_labels_train is False and JTTMethod.uses_group_labels_val is False
