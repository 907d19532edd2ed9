"""The task side's pydantic building blocks: `WireModel` (camelCase aliases, unknown fields
ignored, frozen) and the field types whose JSON encoding has a wrinkle (`Int32`, `Int64`,
`Duration`), each a validator around `encoding`'s plain parsers.

Only `task` imports this module, so pydantic is loaded with the task side, never for a
report (`report` is plain code). Knows nothing of HTTP.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from batch_agent.wire.encoding import format_duration, parse_duration, parse_integer


class WireModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON object to send: camelCase, unset fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _to_duration(value: object) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError as error:
        raise PydanticCustomError("duration", str(error)) from None


def _integer(kind: str) -> BeforeValidator:
    """A validator for an integer of `kind` (int32, int64, uint64); see `parse_integer`."""

    def validate(value: object) -> int:
        try:
            return parse_integer(value, kind)
        except ValueError as error:
            raise PydanticCustomError(kind, str(error)) from None

    return BeforeValidator(validate)


Int32 = Annotated[int, _integer("int32")]
Int64 = Annotated[int, _integer("int64"), PlainSerializer(str, return_type=str)]
Duration = Annotated[
    timedelta, BeforeValidator(_to_duration), PlainSerializer(format_duration, return_type=str)
]
