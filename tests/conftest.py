"""Test-wide settings: one torch thread (small tensors; avoids OpenMP oversubscription on 2 cores),
and the marker for tests that train on Fashion-MNIST (CI installs it, so there they never skip)."""

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")
needs_fashion_mnist = pytest.mark.skipif(not FASHION_MNIST.exists() and not os.environ.get("CI"),
                                         reason="apt-get install dataset-fashion-mnist (CI installs it)")
