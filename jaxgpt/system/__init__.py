"""The system layer: what every other layer may use, and nothing of jaxgpt below it: errors, the device mesh,
signals, the allocator, the compilation cache, library log filters."""
