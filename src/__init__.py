"""mlx-server: an OpenAI-compatible server for local vision-language models on MLX."""

__version__ = "0.1.0"
