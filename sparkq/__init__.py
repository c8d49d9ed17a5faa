"""SparkQ: a small task-queue server that keeps its state in one SQLite file.

Importing this package stays cheap on purpose: the supervisor imports `sparkq.storage`, and only
`sparkq.app` (loaded by `python -m sparkq`) pulls in the HTTP stack.
"""

__version__ = "0.3.0"
