"""The test suite; shared helpers (data_fixtures, dvc_project, ...) are imported as ``tests.<module>``."""
