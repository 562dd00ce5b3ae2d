"""Yes/no and numeric settings from the environment, parsed one way for the whole worker.

Storage settings are stricter (a malformed ``MINIO_SECURE`` is an error, :mod:`worker.storage`);
everything else here falls back to its default on a value it does not recognise.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, TypeVar

logger = logging.getLogger("worldplay.settings")
Number = TypeVar("Number", int, float)

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def env_flag(name: str, default: bool | None) -> bool | None:
    """1/true/yes/on or 0/false/no/off (any case, spaces ignored); unset or anything else: `default`."""
    value = os.environ.get(name, "").strip().lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    return default


def env_number(name: str, default: Number, parse: Callable[[str], Number]) -> Number:
    """`parse` (``int`` or ``float``) of the variable; unset, blank or unparsable (logged): `default`."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return parse(value)
    except ValueError:
        logger.warning("ignoring %s=%r: not %s", name, value, "an integer" if parse is int else "a number")
        return default
