"""Defers two modules our Google client libraries import and the agent almost never uses.

`googleapiclient.discovery` imports `google.oauth2.service_account` (and through it
`cryptography`: ~8 MB) for key-file credentials, which the agent does not use: it gets its
tokens from the metadata server. `httplib2` imports `httplib2.auth` (and through it
`pyparsing`: ~9 MB) to parse WWW-Authenticate challenges, which only its own username and
password credentials need. Each is put in `sys.modules` as a stand-in module that imports the
real one the first time one of its attributes is read, so nothing changes for a caller that
does use them. `defer_unused_imports` must run before `httplib2` and `googleapiclient` are
first imported (`batch_agent.control` calls it first thing). Imports neither of them itself.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

DEFERRED = ("google.oauth2.service_account", "httplib2.auth")


class _Deferred(types.ModuleType):
    """Stands in for the module of the same name until an attribute of it is read."""

    def __getattr__(self, attribute: str) -> Any:
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        real = importlib.import_module(name)
        self.__dict__.update(real.__dict__)
        return getattr(real, attribute)


def defer_unused_imports() -> None:
    """Put the stand-ins in place for the modules of `DEFERRED` not imported yet."""
    for name in DEFERRED:
        if name not in sys.modules:
            sys.modules[name] = _Deferred(name)
