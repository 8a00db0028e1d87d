"""Errors as JSON, in the shape the CLI prints them: expected, got, fix.

Every error the API returns is ``{"error": {"status", "expected", "got", "fix",
"message"}}``: an :class:`~glimpse.streaming.errors.InputError` with its class's status
(``service/errors.py``), a request that fails validation (422, one clause per field;
malformed JSON too), a Starlette/FastAPI ``HTTPException`` (unknown URL, wrong method),
and anything unexpected (500, logged here, never a traceback to the client).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import InputError, status_of

logger = logging.getLogger("glimpse.service.api.errors")

__all__ = ["error_body", "error_response", "install_error_handlers"]

# What a client should have sent, by status, for HTTPExceptions raised without one.
_HTTP_HINTS = {
    404: ("a known URL (see /docs)", "check the path; the API lives under /api"),
    405: ("a method this URL accepts", "use the method the API documents (see /docs)"),
    413: ("a smaller request body", "send less data in one request"),
}


def error_body(status: int, expected: str, got: str, fix: str) -> dict[str, Any]:
    """The JSON of an error response."""
    return {"error": {"status": status, "expected": expected, "got": got, "fix": fix,
                      "message": f"expected {expected}; got {got}. Fix: {fix}"}}


def error_response(status: int, expected: str, got: str, fix: str,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, expected, got, fix), status_code=status,
                        headers=dict(headers) if headers else None)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every error into :func:`error_body` JSON."""
    app.add_exception_handler(InputError, _input_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)


async def _input_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InputError)
    status = status_of(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    logger.info("%s %s -> %d: %s", request.method, request.url.path, status, exc)
    return error_response(status, exc.expected, exc.got, exc.fix, headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    expected, got, fix = validation_clauses(exc.errors())
    logger.info("%s %s -> 422: %s; got %s", request.method, request.url.path, expected, got)
    return error_response(422, expected, got, fix)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    detail = exc.detail
    if isinstance(detail, Mapping) and {"expected", "got", "fix"} <= set(detail):
        expected, got, fix = detail["expected"], detail["got"], detail["fix"]
    else:
        expected, fix = _HTTP_HINTS.get(exc.status_code, (f"a request the service can answer "
                                                          f"(HTTP {exc.status_code})", str(detail)))
        got = f"{request.method} {request.url.path}" + (f" ({detail})" if detail else "")
    return error_response(exc.status_code, expected, got, fix, exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, "a request the service can answer", "an internal error",
                          "try again; if it persists, report it with the service's log")


def validation_clauses(errors: Sequence[Mapping[str, Any]]) -> tuple[str, str, str]:
    """``(expected, got, fix)`` of pydantic's errors: one clause per field, joined by "; "."""
    expected, got, fields = [], [], []
    for err in errors:
        if err.get("type") == "json_invalid":
            reason = (err.get("ctx") or {}).get("error", err.get("msg", ""))
            return ("a JSON request body", f"malformed JSON ({reason} at position "
                    f"{err['loc'][-1]})", "send valid JSON with Content-Type: application/json")
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        field = ".".join(loc) or str((err.get("loc") or ["request"])[0])
        rule = str(err.get("msg", "a valid value")).removeprefix("Value error, ")
        rule = rule.removeprefix("Input should be ").removeprefix("Field ")
        expected.append(f"{field}: {rule}")
        value = err.get("input")
        got.append(f"{field} missing" if err.get("type") == "missing"
                   else f"{field}={value!r:.80} ({type(value).__name__})")
        fields.append(field)
    fix = f"correct {', '.join(dict.fromkeys(fields))} and send the request again"
    return "; ".join(expected), "; ".join(got), fix
