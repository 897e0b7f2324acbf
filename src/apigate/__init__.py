"""apigate: an API gateway on uvloop + httptools."""

__version__ = "0.1.0"
__all__ = ["__version__"]
