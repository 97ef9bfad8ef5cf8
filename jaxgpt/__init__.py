"""jaxgpt: the character-level GPT of Karpathy's "Let's build GPT" lecture, in JAX/Flax."""

from jaxgpt.config import TrainConfig, load_config
from jaxgpt.model import GPT, BigramLanguageModel, GPTConfig
from jaxgpt.tokenizers import CharTokenizer

__all__ = ["GPT", "BigramLanguageModel", "CharTokenizer", "GPTConfig", "TrainConfig", "load_config"]
