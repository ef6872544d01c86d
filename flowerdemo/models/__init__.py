"""Networks and their files: the backbone registry, checkpoints (safetensors + JSON), BatchNorm
folding, the Hugging Face Hub."""
