"""repobuild: signed, static, content-addressed package repositories."""

__version__ = "0.1.0"
