"""OpenAI-style error objects and the handlers that turn every failure into one.

Every refusal of the API is ``{"error": {"message", "type", "param", "code"}}`` with a 4xx or
5xx status, so clients (the official ``openai`` package included) can show the message.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answered as an OpenAI-style error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def response(self) -> JSONResponse:
        return error_response(
            self.status,
            self.message,
            type=self.type,
            param=self.param,
            code=self.code,
            headers=self.headers,
        )


class InputTooLongError(ValueError):
    """An input does not fit the model's sequence length (raised on the batcher's thread)."""

    code = "context_length_exceeded"


def error_response(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def overloaded(exc: Exception) -> ApiError:
    """503 with Retry-After: the batcher's queue is full or it is shutting down."""
    return ApiError(
        503,
        f"The server is busy ({exc}); retry after a short wait.",
        type="server_error",
        code="server_overloaded",
        headers={"Retry-After": "1"},
    )


def too_large(param: str | None, what: str) -> ApiError:
    return ApiError(400, f"The image is too large ({what}).", param=param, code="image_too_large")


def install_error_handlers(app: FastAPI) -> None:
    """Answer API errors, validation errors, HTTP errors and crashes as error objects."""

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_response(list(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = (
                f"This server has no endpoint {request.url.path!r}: see /docs for "
                "/v1/embeddings, /v1/search, /v1/pages/{id}/image, /v1/models and /health."
            )
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path!r}."
        return error_response(
            exc.status_code, message, code=code, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _crash(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(
            500, f"The server had an error ({type(exc).__name__}).", type="server_error"
        )


def validation_response(errors: list) -> JSONResponse:
    """pydantic's errors as one OpenAI-style message naming the parameter."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return error_response(
            400,
            "We could not parse the JSON body of your request. It must be valid JSON.",
            code="invalid_json",
        )
    loc = [p for p in first.get("loc", ()) if p != "body"]
    if loc[:1] == ["input"]:  # a union: the deepest error says the most
        first = max(errors, key=lambda e: len(e.get("loc", ())))
        loc = [p for p in first.get("loc", ()) if p != "body"]
    param = _param(loc)
    message = first.get("msg", "invalid request")
    if first.get("type") == "missing":
        message = f"Missing required parameter: '{param}'."
    elif param:
        message = f"Invalid value for '{param}': {message}."
    if loc[:1] == ["input"]:
        message += (
            " 'input' must be a string, or a list of strings and objects "
            '{"text": ..., "image": ...} (token arrays are not supported).'
        )
    return error_response(400, message, param=param or None, code=first.get("type"))


def _param(loc: list) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[union[str,InputItem]]", "InputItem") or "[" in str(part):
            continue  # pydantic's names of union members
        else:
            out += ("." if out else "") + str(part)
    return out
