"""Backbones: open_clip CLIP models and transformers language models, prepared for atoms."""
