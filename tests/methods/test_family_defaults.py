"""Per-family hyperparameter defaults, declared once on the method classes."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from gradtune.finetune.linear import FinetuneConfig
from gradtune.methods import list_methods
from gradtune.methods.self_ft import SELFMethod
from gradtune.methods.tuning import build_method, family_defaults

TEXT = {"finetune.optimizer": "adamw", "finetune.lr": 1e-5, "finetune.schedule": "linear",
        "finetune.batch_size": 16}


@pytest.mark.parametrize("name", ["gradtune", "random", "loss-topk", "gradtune-auto", "jtt", "suby"])
def test_text_family_gets_the_papers_text_optimizer_and_keeps_the_methods_own_defaults(name):
    assert family_defaults(name, "text") == TEXT
    own = build_method(name).finetune
    got = build_method(name, family_defaults(name, "text")).finetune
    text = FinetuneConfig.for_text()
    for key in ("optimizer", "lr", "schedule", "batch_size"):
        assert getattr(got, key) == getattr(text, key)
    for key in ("epochs", "sampler", "reset", "weight_decay"):   # the method's own choices stay
        assert getattr(got, key) == getattr(own, key)


def test_self_uses_its_authors_text_setting():
    got = build_method("self", family_defaults("self", "text"))
    assert asdict(got) == asdict(SELFMethod.for_text())


@pytest.mark.parametrize("name", list_methods())
def test_vision_tabular_and_unknown_families_change_nothing(name):
    for family in ("vision", "tabular", None):
        assert family_defaults(name, family) == {}
    build_method(name, family_defaults(name, "text"))     # every text default is a valid parameter


def test_methods_without_a_finetune_loop_have_no_text_defaults():
    for name in ("dfr", "dfr-xrm", "afr", "group-dro", "ula", "dpe", "erm"):
        assert family_defaults(name, "text") == {}
