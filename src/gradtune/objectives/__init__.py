"""Training math shared by last-layer fine-tuning, the methods and full-network training.

* :mod:`~gradtune.objectives.group_dro`: Group DRO's per-group losses, weight update and loss;
* :mod:`~gradtune.objectives.jtt`: JTT's error set and upsampled training list;
* :mod:`~gradtune.objectives.choices`: the optimizer, schedule and sampler names the trainers accept;
* :mod:`~gradtune.objectives.sampling`: epoch orders, class/group-balance weights, balanced subsamples.

Depends on torch, numpy and :mod:`gradtune._validation` only.
"""
