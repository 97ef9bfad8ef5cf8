"""Weights from elsewhere: PyTorch state_dicts (lecture, nanoGPT, Hugging Face GPT-2) and pretrained sources."""
