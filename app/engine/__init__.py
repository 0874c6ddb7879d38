"""The generation engine: continuous batching over a transformers causal LM, in a process of its own."""
