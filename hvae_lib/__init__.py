"""hvae_lib: the tested library behind the course."""
__version__ = "0.1.0"
