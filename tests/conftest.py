"""Test-wide settings: one torch thread (small tensors; avoids OpenMP oversubscription on 2 cores)."""

import torch

torch.set_num_threads(1)
