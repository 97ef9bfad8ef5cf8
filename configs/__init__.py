"""Named training configs, shipped as `jaxgpt.configs`: each module defines `config = TrainConfig(...)`."""
