"""Test-wide settings: tiny models run fastest on one thread (subprocesses set their own)."""
import torch

torch.set_num_threads(1)
