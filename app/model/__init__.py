"""Model sources: the built-in tiny model and loading any checkpoint through `from_pretrained`."""
