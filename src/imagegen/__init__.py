"""imagegen: a backend for products that sell AI image generation for credits."""

__version__ = "0.1.0"
