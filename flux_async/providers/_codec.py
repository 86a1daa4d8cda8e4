""":class:`BaseCodec`, the part every provider codec shares: the API key and the headers built
from it, reading a 2xx body (hand-written reader first, converter second), task ids, failures
and error responses. Pure: no I/O, no clock, no aiohttp/anyio, nothing from transport,
scheduler or session.

The codecs subclass it and set their name, converter and readers. It leans on :mod:`._convert`
(converters) and :mod:`._errors` (error bodies, clipping, redaction); the codecs call
:mod:`._build` and :mod:`._status` themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

import attrs
import cattrs

from .._checks import task_id_problem
from .._http import FixedHeaders, HttpRequest, HttpResponse
from ..errors import APIError, ConfigurationError, ProtocolError, ValidationError
from ..models import TaskFailure, TaskRef, TaskState, TaskStatus
from ._convert import describe_structure_error
from ._errors import body_text, clip, error_from_response, is_success, redact

__all__ = ["USER_AGENT", "BaseCodec", "check_api_key"]

#: Sent as ``User-Agent`` unless the caller gives another. Kept here rather than read from
#: ``flux_async.__version__`` because the package's ``__init__`` will import the session, which
#: imports the codecs (an import cycle); a test checks the two agree.
USER_AGENT = "flux-async/0.1.0.dev0"

#: Failure codes (lower case, substring) that mean the content was refused by moderation.
_MODERATION_WORDS = ("content_policy", "moderat", "nsfw", "sensitive_content", "safety")

T = TypeVar("T")


def check_api_key(api_key: object) -> None:
    """A key must be a non-empty string that is safe in a header (the key itself is never shown)."""
    if not isinstance(api_key, str) or not api_key.strip():
        raise ConfigurationError("an API key is required (a non-empty string)")
    if not api_key.isprintable() or api_key != api_key.strip():
        raise ConfigurationError(
            "the API key contains whitespace or control characters; check how it was loaded"
        )


@attrs.frozen(kw_only=True)
class BaseCodec:
    """API key, user agent, headers and error parsing, common to the codecs.

    The key is never part of a repr; it only goes into the auth header of built requests.
    """

    api_key: str = attrs.field(repr=False)
    user_agent: str = USER_AGENT
    #: The headers of every API request, built once (read-only, so requests can share them).
    _header_map: Mapping[str, str] = attrs.field(init=False, repr=False, eq=False, hash=False)

    #: Set by each codec: its name and its private converter.
    name = "base"
    _wire: ClassVar[cattrs.Converter]
    #: Hand-written readers for the bodies read most often (a poll body is read on every poll
    #: of every task), each giving exactly what the converter gives for the shapes it expects.
    #: Anything else makes a reader raise, and the converter reads the body again: it accepts
    #: what it accepts and says precisely what is wrong with the rest. A test checks the two
    #: agree on generated bodies.
    _readers: ClassVar[Mapping[type, Callable[[dict[str, Any]], Any]]] = {}
    #: 5xx statuses that, answered with the provider's own JSON error envelope, prove that no
    #: task was made (``ServerError.refused``): decided per provider from its documentation.
    refused_server_statuses: ClassVar[frozenset[int]] = frozenset()

    def __attrs_post_init__(self) -> None:
        check_api_key(self.api_key)
        if not isinstance(self.user_agent, str) or not self.user_agent.isprintable():
            raise ConfigurationError("user_agent must be a printable string")
        headers = {**self._auth_headers(), "User-Agent": self.user_agent, "Accept": "application/json"}
        object.__setattr__(self, "_header_map", FixedHeaders(headers))

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def _headers(self) -> Mapping[str, str]:
        return self._header_map

    def _get(self, url: str) -> HttpRequest:
        return HttpRequest(method="GET", url=url, headers=self._headers())

    def _object(self, response: HttpResponse, what: str) -> dict[str, Any]:
        """A 2xx body as a JSON object: APIError for a non-2xx response, ProtocolError for a
        body that is not a JSON object."""
        if not is_success(response):
            raise self.parse_error(response)
        try:
            data = response.decoded()
        except (ValueError, RecursionError) as exc:
            raise self._protocol_error(response, f"{what} response is not JSON") from exc
        if not isinstance(data, dict):
            raise self._protocol_error(response, f"{what} response is not a JSON object")
        return data

    def _structure(self, response: HttpResponse, cls: type[T], what: str) -> T:
        """A 2xx body structured as ``cls`` by the codec's converter (APIError for non-2xx,
        ProtocolError for anything unreadable)."""
        data = self._object(response, what)
        reader = self._readers.get(cls)
        if reader is not None:
            try:
                return reader(data)  # type: ignore[no-any-return]
            except Exception:  # the converter below reads it again and explains
                pass
        try:
            return self._wire.structure(data, cls)
        except Exception as exc:  # a converter may raise anything on hostile input: one boundary
            message = f"unexpected {what} response ({describe_structure_error(exc)})"
            raise self._protocol_error(response, message) from exc

    def submit_cost(self, response: HttpResponse) -> float | None:
        """What a 2xx submit answer says the task costs, in US dollars: None here (only BFL's
        answer carries a cost). Never raises."""
        return None

    def _protocol_error(self, response: HttpResponse, message: str) -> ProtocolError:
        """A ProtocolError carrying the response's (clipped) body; the key is redacted from
        both the message and the body."""
        return ProtocolError(
            redact(f"{self.name}: {message}", self.api_key),
            body=body_text(response, self.api_key),
            provider=self.name,
        )

    def _task_id(self, value: object, response: HttpResponse) -> str:
        """A usable task id (``_checks.check_task_id``: what can go into a URL as it is), else
        ProtocolError: an id that could not be polled is as good as none."""
        problem = task_id_problem(value)
        if problem is not None or not isinstance(value, str):
            shown = clip(repr(value), 80)
            raise self._protocol_error(response, f"no usable task id in response ({shown}: {problem})")
        return value

    def _check_ref(self, ref: TaskRef) -> None:
        if ref.provider != self.name:
            raise ValidationError(
                "provider", ref.provider, repr(self.name), reason=f"a {ref.provider!r} task cannot be polled on {self.name!r}"
            )

    def _failure(self, failure: TaskFailure | None, default: str) -> TaskFailure:
        """The failure as reported (its message redacted), or ``default`` when none was."""
        if failure is None:
            return TaskFailure(code=None, message=default)
        code = redact(failure.code, self.api_key) if isinstance(failure.code, str) else failure.code
        return TaskFailure(code=code, message=redact(failure.message, self.api_key) or default)

    def _failed_status(self, failure: TaskFailure) -> TaskStatus:
        """FAILED, or MODERATED when the aggregator's failure code says content policy.

        The aggregators report a refused prompt or image as an ordinary ``failed`` task; only its
        error code tells moderation apart, so the caller gets ``ModerationError`` for it.
        """
        code = str(failure.code or "").lower()
        if any(word in code for word in _MODERATION_WORDS):
            return TaskStatus.MODERATED
        return TaskStatus.FAILED

    def _not_found(self, response: HttpResponse, ref: TaskRef) -> TaskState:
        """A 404 on a poll: the provider does not know the task (a terminal state)."""
        error = self.parse_error(response)
        return TaskState(
            task_id=ref.task_id,
            status=TaskStatus.NOT_FOUND,
            raw_status=f"HTTP {response.status}",
            failure=TaskFailure(code=error.code, message=error.message),
        )

    def parse_error(self, response: HttpResponse) -> APIError:
        """The APIError subclass for a non-2xx response, with code, message and request id."""
        return error_from_response(
            response, provider=self.name, secret=self.api_key, refused_statuses=self.refused_server_statuses
        )
