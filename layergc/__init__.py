"""layergc: a layer service and online garbage collector for distribution registry storage."""

__version__ = "0.1.0"
