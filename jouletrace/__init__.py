"""jouletrace: where an inference fleet's joules go."""
__version__ = "0.1.0"
