"""Request bodies of the REST routes: decoded by our msgspec decoders, not Litestar's.

Handlers declare ``data: SomeStruct`` (so the OpenAPI document shows the body schema) and the
router sets ``dto=WireBody``: Litestar then hands the raw bytes to :meth:`WireBody.decode_bytes`,
which checks the content type (415: a JSON type is required, as a body without one could
be sent by a page on another site without a CORS preflight), decodes with the Struct's
decoder built once (400 for malformed JSON, 422 for a valid JSON that breaks a rule,
naming the field) and raises the errors of ``arrwdb.transports.errors``: the same decoding,
messages and codes as the WebSocket and NDJSON transports.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from litestar.dto import AbstractDTO

from arrwdb.transports.errors import BadRequest, UnsupportedMediaType
from arrwdb.transports.messages import decode

JSON_TYPES = ("application/json",)


def is_json(media_type: str) -> bool:
    media_type = media_type.strip().lower()
    return media_type in JSON_TYPES or media_type.endswith("+json")


class WireBody(AbstractDTO[Any]):
    """A pass-through "DTO": no transfer model, just our decoder and Litestar's schema."""

    @classmethod
    def generate_field_definitions(cls, model_type: type[Any]) -> Generator[Any, None, None]:
        yield from ()

    @classmethod
    def detect_nested_field(cls, field_definition: Any) -> bool:
        return False

    @classmethod
    def create_for_field_definition(
        cls, field_definition: Any, handler_id: str, backend_cls: Any = None
    ) -> None:
        return None

    @classmethod
    def create_openapi_schema(
        cls, field_definition: Any, handler_id: str, schema_creator: Any
    ) -> Any:
        return schema_creator.for_field_definition(field_definition)

    def decode_bytes(self, value: bytes) -> Any:
        connection: Any = self.asgi_connection
        media_type = connection.content_type[0]
        if media_type and not is_json(media_type):
            raise UnsupportedMediaType(
                f"content type {media_type!r} is not supported here; send application/json",
                field="Content-Type",
            )
        if not value.strip():
            raise BadRequest("the request body is empty; send a JSON object")
        if not media_type:  # else a page on another site could send it without a preflight
            raise UnsupportedMediaType(
                "the body has no content type; send Content-Type: application/json",
                field="Content-Type",
            )
        return decode(connection.route_handler.parsed_data_field.annotation, value)

    def decode_builtins(self, value: dict[str, Any]) -> Any:
        raise UnsupportedMediaType("form bodies are not supported; send application/json")
