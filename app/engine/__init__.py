"""The generation engine: continuous batching over a transformers causal LM, one background thread."""
