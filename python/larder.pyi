"""Type stub of the larder module (liblarder for Python)."""
from __future__ import annotations

import builtins

from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar, overload

__version__: str

Size = int | str
"""Bytes, or a string such as "512MiB" or "2GiB"."""
Duration = float | int | str | None
"""Seconds, or "250ms", "30s", "5m", "2h", "1d"; "never" or a negative number: never."""

M = TypeVar("M")
F = TypeVar("F", bound=Callable[[], Any])

class Error(Exception):
    code: int
    component: str | None

class NotFoundError(Error, KeyError): ...
class TimeoutError(Error, builtins.TimeoutError): ...
class LoadError(Error):
    exc_type: str
    """The type name of the exception the load raised (it is also __cause__)."""
class CooldownError(LoadError): ...
class BudgetError(Error, MemoryError): ...
class BusyError(Error): ...
class ClosedError(Error): ...
class DrainingError(Error): ...

class Lease(Generic[M]):
    @property
    def value(self) -> M: ...
    @property
    def released(self) -> bool: ...
    served_by: str
    requested: str
    cold_start: bool
    wait_ms: float
    load_ms: float
    def release(self) -> None: ...
    def __enter__(self) -> M: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]: ...

class LeaseSet:
    leases: tuple[Lease[Any], ...]
    def release(self) -> None: ...
    def __enter__(self) -> tuple[Any, ...]: ...
    def __exit__(self, *exc: object) -> Literal[False]: ...

class AsyncLease(Generic[M]):
    @property
    def lease(self) -> Lease[M] | None: ...
    async def __aenter__(self) -> M: ...
    async def __aexit__(self, *exc: object) -> Literal[False]: ...

class EventIterator(Iterator[dict[str, Any]]):
    lost: int
    def __next__(self) -> dict[str, Any]: ...

class ComponentDecorator:
    def __call__(self, load: F) -> F: ...

class Manager:
    closed: bool
    budget: int
    def __init__(
        self,
        budget: Size | None = "4GiB",
        policy: Literal["cost", "lru"] = "cost",
        ttl: Duration = "5m",
        state_dir: str | None = None,
        on_event: Callable[[dict[str, Any]], object] | None = None,
        loader_threads: int = 4,
        close_timeout: float | None = 10.0,
    ) -> None: ...
    def __enter__(self) -> Manager: ...
    def __exit__(self, *exc: object) -> Literal[False]: ...
    def close(self) -> None: ...
    def define(
        self,
        name: str,
        load: Callable[[], Any],
        unload: Callable[[Any], object] | None = None,
        *,
        memory: Size | None = None,
        ttl: Duration = None,
        instances: int | None = None,
        new_instance: Callable[[Any], Any] | None = None,
        free_instance: Callable[[Any, Any], object] | None = None,
        pin: bool = False,
        priority: int = 0,
        fallback: str | None = None,
        preload: bool = False,
        queue_max: int = 0,
    ) -> None: ...
    def component(
        self,
        name: str | None = None,
        *,
        unload: Callable[[Any], object] | None = None,
        memory: Size | None = None,
        ttl: Duration = None,
        instances: int | None = None,
        new_instance: Callable[[Any], Any] | None = None,
        free_instance: Callable[[Any, Any], object] | None = None,
        pin: bool = False,
        priority: int = 0,
        fallback: str | None = None,
        preload: bool = False,
        queue_max: int = 0,
    ) -> ComponentDecorator: ...
    def undefine(self, name: str, timeout: float | None = 30.0) -> None: ...
    def acquire(self, name: str, timeout: float | None = 30.0, *, fallback: bool = True) -> Lease[Any]: ...
    def acquire_async(
        self, name: str, timeout: float | None = 30.0, *, fallback: bool = True
    ) -> AsyncLease[Any]: ...
    def acquire_set(self, names: Iterable[str], timeout: float | None = 30.0) -> LeaseSet: ...
    def unload(self, name: str, timeout: float | None = 30.0) -> None: ...
    def trim(self) -> dict[str, int]: ...
    @overload
    def preload(self) -> int: ...
    @overload
    def preload(self, names: Iterable[str]) -> int: ...
    def wait_ready(self, timeout: float | None = None) -> bool: ...
    def registry(self) -> dict[str, dict[str, Any]]: ...
    def memory(self, history: int = 60) -> dict[str, Any]: ...
    def events(self, timeout: float | None = None, *, past: bool = False) -> EventIterator: ...

def parse_size(size: Size) -> int: ...
def strerror(code: int) -> str: ...
