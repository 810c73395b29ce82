"""TaskRegistry keeps a bounded cache of definitions for plain (unregistered) functions."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from typing import Any

from fastapi_taskflow import TaskRegistry
from fastapi_taskflow.registry import UNREGISTERED_CACHE_SIZE


def _closure(n: int) -> Callable[[], Any]:
    return lambda: n


def test_a_new_lambda_per_call_does_not_grow_the_registry_without_end() -> None:
    """Past the bound, the oldest plain functions are let go and can be garbage collected."""
    registry = TaskRegistry()
    first = _closure(-1)
    first_ref = weakref.ref(first)
    registry.definition_for(first)
    del first
    for n in range(UNREGISTERED_CACHE_SIZE + 10):
        registry.definition_for(_closure(n))
    gc.collect()
    assert first_ref() is None
    assert len(registry._unregistered) == UNREGISTERED_CACHE_SIZE


def test_a_cached_plain_function_keeps_its_definition() -> None:
    """Within the bound, the same function gets the same definition back (logged once)."""
    registry = TaskRegistry()
    func = _closure(1)
    assert registry.definition_for(func) is registry.definition_for(func)
    assert registry.definition_for(func).registered is False
