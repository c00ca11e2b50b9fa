"""The administrators' web dashboard, JSON API, metrics and webhook notifications.

The application lives in :mod:`strokeflow.web.app` (``create_app``); nothing is imported
here, so that every ``strokeflow`` command does not pay for FastAPI at start-up.
"""
