"""extractive-qa: Hydra-configured fine-tuning of encoders for extractive question answering."""

__version__ = "0.1.0"
