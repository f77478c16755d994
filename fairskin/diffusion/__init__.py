"""Level 2: Stable Diffusion models, the CBDM loss, the Ray Train fine-tune and pool generation."""
