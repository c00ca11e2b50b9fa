"""The names of the environment variables the settings read (no imports: the command line
checks them without loading the settings model)."""

from __future__ import annotations

#: Prefix of every variable of the configuration (``STROKEFLOW_DICOM_PORT``,
#: ``STROKEFLOW_ANALYSIS__CTP__CORE_RCBF_THRESHOLD``, ...); pydantic-settings compares
#: the names without case.
ENV_PREFIX = "STROKEFLOW_"

#: Environment variable naming the TOML file when no path is passed explicitly.
CONFIG_FILE_ENV = f"{ENV_PREFIX}CONFIG"
