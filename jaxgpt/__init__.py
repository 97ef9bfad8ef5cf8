"""jaxgpt: the character-level GPT of Karpathy's "Let's build GPT" lecture, in JAX/Flax."""

from jaxgpt.core.config import GPTConfig, TrainConfig, load_config
from jaxgpt.core.model import GPT, BigramLanguageModel
from jaxgpt.data.tokenizers import CharTokenizer

__all__ = ["GPT", "BigramLanguageModel", "CharTokenizer", "GPTConfig", "TrainConfig", "load_config"]
