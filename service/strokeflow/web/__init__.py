"""The administrators' web dashboard, JSON API, metrics and webhook notifications."""

from strokeflow.web.app import create_app
from strokeflow.web.options import WebOptions

__all__ = ["WebOptions", "create_app"]
