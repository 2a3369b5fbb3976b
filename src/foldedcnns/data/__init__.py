"""Data: image folders, CIFAR archives, NoScope videos, batched transforms and the synthetic game-screen set."""
