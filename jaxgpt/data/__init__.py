"""The data layer: tokenizers, text files and prepared datasets, and the batches a run trains on."""
