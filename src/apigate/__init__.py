"""apigate: an API gateway on uvloop + httptools."""

from apigate._native import select as _select_build

__version__ = "0.1.0"
NATIVE = _select_build()  # True: the data plane runs as mypyc-compiled C (apigate/_native.py)
__all__ = ["NATIVE", "__version__"]
