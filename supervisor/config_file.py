"""Reading `sparkq.yml`: YAML that refuses duplicate keys, and a JSON cache of the parse.

A file that cannot be read or parsed fails with one ConfigError naming the file and, for YAML
errors, the line. What the values mean and whether they are valid is config.py's job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ConfigError

CACHE_NAME = ".config-cache.json"  # beside the data, in sparkq/data/
# Bumped when parsing rules change, so a parse cached by an older version is not trusted.
PARSER_VERSION = 2


def read_cached(path: Path, cache: Path) -> Any:
    """The parsed YAML of `path`, from a JSON cache while the file is unchanged.

    Importing PyYAML costs more than the rest of a quick command (`status`, `backup-list`), so
    the parse is kept as JSON beside the data, keyed by the file's path, mtime, size and inode.
    Only data that survives a JSON round trip unchanged is cached; validation always runs.
    """
    import json

    try:
        st = path.stat()
        stamp = [str(path), st.st_mtime_ns, st.st_size, st.st_ino, PARSER_VERSION]
    except OSError:
        return read_yaml(path)  # it says why
    try:
        cached = json.loads(cache.read_bytes())
        if cached["stamp"] == stamp:
            return cached["data"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    data = read_yaml(path)
    try:
        blob = json.dumps({"stamp": stamp, "data": data}).encode()
        if json.loads(blob)["data"] == data and cache.parent.is_dir():
            from .fsutil import atomic_write_bytes

            atomic_write_bytes(cache, blob, mode=0o600)
    except (OSError, TypeError, ValueError):
        pass  # a read-only data dir, or YAML values JSON cannot hold: parse each time
    return data


_UniqueKeyLoader = None  # built on first use: importing yaml is what the JSON cache avoids


def read_yaml(path: Path) -> Any:
    """The parsed YAML of `path`, uncached; a file that cannot be read or parsed is one ConfigError."""
    import yaml

    global _UniqueKeyLoader
    if _UniqueKeyLoader is None:
        _UniqueKeyLoader = _unique_key_loader()

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; fix or restore it (backup-restore N --config-only)")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror}); check its permissions")
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except _DuplicateKey as exc:
        raise ConfigError(f"{path}: line {exc.line}: key '{exc.key}' appears twice ({exc.where}); "
                          "keep one of them") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where}: invalid YAML ({problem}); fix the file or restore it")


class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int, where: str):
        super().__init__(key)
        self.key, self.line, self.where = key, line, where


def _unique_key_loader():
    """A SafeLoader that refuses a mapping with the same key twice: PyYAML would keep the last
    one silently, so a second `server:` section would quietly drop the first."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen: dict = {}
            for key_node, _value in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise _DuplicateKey(str(key), line, f"first on line {seen[key]}")
                    seen[key] = line
                except TypeError:
                    continue  # an unhashable key: the base class reports it
            return super().construct_mapping(node, deep=deep)

    return Loader
