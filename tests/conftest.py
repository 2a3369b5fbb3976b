"""Shared test settings: small thread count so parallel work stays predictable."""

import os

import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(min(2, torch.get_num_threads()))
