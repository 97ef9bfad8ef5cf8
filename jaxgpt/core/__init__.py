"""The core: the model and its config, losses, the optimizer, the keys of every random draw, FLOPs, sampling."""
