"""Option values the commands share: comma-separated integer lists ("1,8,32")."""

from __future__ import annotations

from qdeploy.errors import QDeployError


def parse_ints(value: str, option: str, minimum: int = 0) -> tuple[int, ...]:
    """'1,8,32' -> (1, 8, 32); anything else, or a number below `minimum`, is a one-line error naming the option."""
    try:
        numbers = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        numbers = ()
    if not numbers or min(numbers) < minimum:
        raise QDeployError(f"{option} {value!r} is not a comma-separated list of integers >= {minimum}; e.g. 1,32")
    return numbers
