"""Defers what our Google client libraries import and the agent almost never uses.

`googleapiclient.discovery` imports `google.oauth2.service_account` (and through it
`cryptography`: ~8 MB) for key-file credentials, which the agent does not use: it gets its
tokens from the metadata server. `httplib2` imports `httplib2.auth` (and through it
`pyparsing`: ~9 MB) to parse WWW-Authenticate challenges, which only its own username and
password credentials need. Each is put in `sys.modules` as a stand-in module that imports the
real one the first time one of its attributes is read, so nothing changes for a caller that
does use them.

`google.auth.credentials` imports `google.auth._regional_access_boundary_utils` for the
regional access boundaries of service-account and workload-identity credentials, and through it
`asyncio` (~25 ms): our metadata-server credentials have none. The agent imports asyncio all
the same, but after its first report went (firstreport.py), not before.

`googleapiclient.discovery` also imports `google.api_core.client_options`, and with it the
package `google.api_core`, whose `__init__` checks the versions of Python and of its own
dependencies (through `importlib.metadata`, reading installed packages' metadata) to warn about
old ones: ~10 ms of the agent's start-up CPU, for warnings that never apply to the versions we
pin. Its stand-in lets submodules load as usual and runs the real `__init__` only when another
attribute of the package is read.

`defer_unused_imports` must run before `httplib2` and `googleapiclient` are first imported
(`batch_agent.control` calls it first thing). Imports neither of them itself.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

DEFERRED = (
    "google.oauth2.service_account",
    "httplib2.auth",
    "google.auth._regional_access_boundary_utils",
)
DEFERRED_INITS = ("google.api_core",)  # packages: their submodules load without it


class _Deferred(types.ModuleType):
    """Stands in for the module of the same name until an attribute of it is read."""

    def __getattr__(self, attribute: str) -> Any:
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        real = importlib.import_module(name)
        self.__dict__.update(real.__dict__)
        return getattr(real, attribute)


class _DeferredInit(types.ModuleType):
    """Stands in for a package whose submodules are found through its `__path__` as usual;
    reading any other attribute runs the package's `__init__` in this very module (so that
    the submodules already loaded stay its attributes), which then is the package."""

    def __getattr__(self, attribute: str) -> Any:
        if not attribute.startswith("__"):  # `from package import submodule` reads it
            submodule = f"{self.__name__}.{attribute}"
            if importlib.util.find_spec(submodule) is not None:
                return importlib.import_module(submodule)
        spec = self.__spec__
        assert spec is not None and spec.loader is not None  # set by defer_unused_imports
        self.__class__ = types.ModuleType  # type: ignore[assignment]  # a plain module now
        self.__file__, self.__loader__, self.__package__ = spec.origin, spec.loader, spec.name
        spec.loader.exec_module(self)
        return getattr(self, attribute)


def defer_unused_imports() -> None:
    """Put the stand-ins in place for the modules of `DEFERRED` and `DEFERRED_INITS` not
    imported yet (a package not installed is left alone)."""
    for name in DEFERRED:
        if name not in sys.modules:
            sys.modules[name] = _Deferred(name)
    for name in DEFERRED_INITS:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)  # imports its parent, not the package itself
        if spec is None or spec.submodule_search_locations is None:
            continue
        package = _DeferredInit(name)
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules[name] = package
        parent, _, child = name.rpartition(".")
        setattr(sys.modules[parent], child, package)  # as an import does: `google.api_core`
