"""SparkQ supervisor: lifecycle of the SparkQ server and the backup/restore pipeline around it."""

__version__ = "0.3.0"
