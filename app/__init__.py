"""OpenAI-compatible inference server for DeepSeek models (FastAPI + transformers + torch)."""
