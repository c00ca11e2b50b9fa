"""Shared test set-up: ``tests/`` itself is importable (``tools``, ``dicomfactory``)
from every sub-folder, since pytest puts this file's folder on ``sys.path``."""
