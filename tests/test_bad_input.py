"""Bad input, one table: each row is refused with its FluxError subclass naming the field, and
nothing is sent.

The library rows run on a session whose transport fails the test on any request; the command
line rows point ``--base-url`` at a socket that counts the connections made to it. Every
message is also checked not to hold the API key.
"""

from __future__ import annotations

import inspect
import math
import shutil
import socket
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import pytest
from click.testing import CliRunner

from flux_async import (
    ConfigurationError,
    FluxError,
    GenerationRequest,
    Limits,
    PollPolicy,
    RetryPolicy,
    Session,
    TaskRef,
    ValidationError,
    catalog,
)
from flux_async._http import HttpRequest, HttpResponse
from flux_async.cli._app import cli
from flux_async.cli._runtime import EXIT_USAGE
from flux_async.providers import get_codec
from flux_async.transport import DownloadLimits, TransportStatistics

KEY = "sk-secret-key-never-shown"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


class NoSend:
    """A transport that fails the test on any request."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, request: HttpRequest, *, time_limit: float | None = None) -> HttpResponse:
        self.fail(request.url)

    async def download(
        self, url: str, dest: Path | None, *, limits: DownloadLimits, expires_at: datetime | None = None
    ) -> tuple[bytes | Path, str]:
        self.fail(url)

    def fail(self, url: str) -> NoReturn:
        self.sent.append(url)
        pytest.fail(f"a request was sent: {url}")

    async def aclose(self) -> None:
        return None

    def statistics(self) -> TransportStatistics:
        raise NotImplementedError


Call = Callable[[NoSend], object]


class Row(NamedTuple):
    id: str
    call: Call
    error: type[FluxError]
    field: str  # must appear in the message (and be ValidationError.field for those)


def session(transport: NoSend, provider: str = "toapis", **options: Any) -> Session:
    return Session(provider, api_key=KEY, base_url="http://127.0.0.1:9", transport=transport, **options)


def in_session(provider: str, use: Callable[[Session], Awaitable[object]]) -> Call:
    async def call(transport: NoSend) -> object:
        async with session(transport, provider) as open_session:
            return await use(open_session)

    return call


def submit(provider: str = "toapis", **fields: Any) -> Call:
    fields.setdefault("model", "flux-kontext-pro")
    fields.setdefault("prompt", "a red fox")
    return in_session(provider, lambda s: s.submit(GenerationRequest(**fields)))


BAD_IDS: dict[str, object] = {
    "dotdot": "..",
    "dot": ".",
    "empty": "",
    "slash": "a/b",
    "dotdot-slash": "../x",
    "query": "a?b",
    "fragment": "a#b",
    "percent": "a%2Fb",
    "space": "a b",
    "leading-space": " abc",
    "tab": "a\tb",
    "control": "a\x1b[31mb",
    "nul": "a\x00b",
    "non-ascii": "t\u00e2che",
    "over-long": "x" * 257,
    "not-a-str": 123,
}


def id_rows() -> Iterator[Row]:
    for name, task_id in BAD_IDS.items():
        for provider in ("toapis", "apimart"):
            yield Row(f"get_task-{provider}-{name}", in_session(provider, lambda s, t=task_id: s.get_task(t)), ValidationError, "task_id")  # type: ignore[misc]
        yield Row(f"resume-{name}", in_session("toapis", lambda s, t=task_id: s.resume(t).result()), ValidationError, "task_id")  # type: ignore[misc]
        yield Row(f"TaskRef-{name}", lambda _, t=task_id: TaskRef(provider="bfl", task_id=t), ValidationError, "task_id")  # type: ignore[misc]
    # BFL is polled by its polling URL: the id in it is checked all the same.
    yield Row("bfl-polling-url-id", in_session("bfl", lambda s: s.get_task("http://127.0.0.1:9/v1/get_result?id=../x")), ValidationError, "task_id")
    yield Row("TaskRef-provider", lambda _: TaskRef(provider="", task_id="abc"), ValidationError, "provider")
    yield Row("TaskRef-polling-url-type", lambda _: TaskRef(provider="bfl", task_id="abc", polling_url=5), ValidationError, "polling_url")  # type: ignore[arg-type]


def altered_ref(provider: str, task_id: str) -> TaskRef:
    """A ref whose id was changed after it was checked (the codecs check it again)."""
    ref = TaskRef(provider=provider, task_id="abc")
    object.__setattr__(ref, "task_id", task_id)
    return ref


def codec_rows() -> Iterator[Row]:
    # Every place an id goes into a URL: the codecs' build functions refuse it themselves.
    for provider in catalog.PROVIDERS:
        codec = get_codec(provider, api_key=KEY)
        for name in ("dotdot", "slash", "query", "nul"):
            task_id = BAD_IDS[name]
            assert isinstance(task_id, str)
            yield Row(f"build_poll-{provider}-{name}", lambda _, c=codec, p=provider, t=task_id: c.build_poll(altered_ref(p, t)), ValidationError, "task_id")  # type: ignore[misc]
    toapis = get_codec("toapis", api_key=KEY)
    yield Row("build_lookup-dotdot", lambda _: toapis.build_lookup(".."), ValidationError, "client_business_id")
    yield Row("idempotency-key-dotdot", submit(idempotency_key=".."), ValidationError, "idempotency_key")


def image_rows(tmp: Path) -> Iterator[Row]:
    missing, directory = str(tmp / "missing.png"), str(tmp)
    for provider in ("toapis", "bfl"):
        yield Row(f"image-nul-{provider}", submit(provider, images=["cat\x00.png"]), ValidationError, "images[0]")
        yield Row(f"image-nul-pathlike-{provider}", submit(provider, images=[Path("cat\x00.png")]), ValidationError, "images[0]")
        yield Row(f"image-missing-{provider}", submit(provider, images=[missing]), ValidationError, "images[0]")
        yield Row(f"image-directory-{provider}", submit(provider, images=[directory]), ValidationError, "images[0]")
    for name, source in {"nul": "cat\x00.png", "missing": missing, "directory": directory, "url": "https://x.test/a.png", "empty": b""}.items():
        yield Row(f"upload-{name}", in_session("toapis", lambda s, src=source: s.upload(src)), ValidationError, "source")  # type: ignore[misc]


class Opaque:
    pass


def extra_rows() -> Iterator[Row]:
    values: dict[str, tuple[dict[Any, Any], str]] = {
        "set": ({"style": {1, 2}}, "extra.style"),
        "bytes": ({"style": b"x"}, "extra.style"),
        "object": ({"style": Opaque()}, "extra.style"),
        "nan": ({"weight": math.nan}, "extra.weight"),
        "inf": ({"weight": -math.inf}, "extra.weight"),
        "int-key": ({1: "x"}, "extra.1"),
        "nested-key": ({"opts": {"a": {2: "x"}}}, "extra.opts.a.2"),
        "nested-in-list": ({"opts": [1, {"b": {3}}]}, "extra.opts[1].b"),
        "too-deep": ({"opts": _nested(40)}, "extra.opts" + "[0]" * 32),
    }
    for name, (extra, field) in values.items():
        for provider in ("toapis", "bfl"):
            yield Row(f"extra-{name}-{provider}", submit(provider, extra=extra), ValidationError, field)
    # Fields the library writes from the request: extra may not replace them.
    owned: list[tuple[str, dict[str, Any], str]] = [
        ("toapis", {"image_urls": ["https://x.test/a.png"]}, "extra.image_urls"),
        ("toapis", {"metadata": {"safety_tolerance": 6}}, "extra.metadata.safety_tolerance"),
        ("toapis", {"metadata": "raw"}, "extra.metadata"),
        ("toapis", {"client_business_id": "mine"}, "extra.client_business_id"),
        ("toapis", {"prompt": "other"}, "extra.prompt"),
        ("apimart", {"response_format": "jpg"}, "extra.response_format"),
        ("bfl", {"aspect_ratio": "1:1"}, "extra.aspect_ratio"),
        ("bfl", {"input_image": "https://x.test/a.png"}, "extra.input_image"),
        ("bfl", {"output_format": "png"}, "extra.output_format"),
    ]
    for provider, owned_extra, owned_field in owned:
        yield Row(f"extra-owned-{owned_field}-{provider}", submit(provider, extra=owned_extra), ValidationError, owned_field)


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def base_url_rows() -> Iterator[Row]:
    urls = {
        "ftp": "ftp://127.0.0.1:9",
        "file": "file:///etc/passwd",
        "credentials": "http://user:pass@127.0.0.1:9",
        "password-only": "http://:pw@127.0.0.1:9",
        "empty-host": "http://",
        "no-host": "http:///v1",
        "query": "http://127.0.0.1:9/?key=1",
        "fragment": "http://127.0.0.1:9/#f",
        "garbage": "garbage",
        "blank": "   ",
        "bad-port": "http://127.0.0.1:99999",
        "space": "http://127.0.0.1 :9",
        "nul": "http://127.0.0.1\x00:9",
        "not-a-str": 9,
    }
    for name, url in urls.items():
        yield Row(f"base_url-{name}", lambda t, u=url: Session("toapis", api_key=KEY, base_url=u, transport=t), ConfigurationError, "base_url")  # type: ignore[misc]


def policy_rows() -> Iterator[Row]:
    poll: list[dict[str, Any]] = [
        {"target_delay": 0}, {"target_delay": math.nan}, {"target_delay": True}, {"first_poll": -1.0},
        {"min_interval": math.inf}, {"min_interval": 5.0, "max_interval": 1.0}, {"backoff": 0.5},
        {"backoff": True}, {"jitter": 1.0}, {"jitter": -0.1}, {"quantum": math.inf}, {"max_in_flight": 0},
        {"max_in_flight": True}, {"max_in_flight": 2.0}, {"max_polls_per_second": 0},
        {"max_poll_errors": 0}, {"rate_limit_pause_cap": math.inf}, {"max_interval": "10"},
    ]  # fmt: skip
    for kwargs in poll:
        name = next(iter(kwargs)) if len(kwargs) == 1 else "min_interval"
        yield Row(f"PollPolicy-{kwargs}", lambda _, k=kwargs: PollPolicy(**k), ConfigurationError, f"PollPolicy.{name}")  # type: ignore[misc]
    retry: list[dict[str, Any]] = [
        {"max_attempts": 0}, {"max_attempts": True}, {"base_delay": 0}, {"base_delay": True},
        {"max_delay": math.inf}, {"base_delay": 5.0, "max_delay": 1.0}, {"multiplier": 0.5},
        {"multiplier": True}, {"jitter": "half"}, {"max_retry_after": -1}, {"max_retry_after": math.nan},
        {"deadline": 0}, {"deadline": True}, {"budget_ratio": -0.1}, {"budget_floor": math.inf},
    ]  # fmt: skip
    for kwargs in retry:
        name = next(iter(kwargs)) if len(kwargs) == 1 else "max_delay"
        yield Row(f"RetryPolicy-{kwargs}", lambda _, k=kwargs: RetryPolicy(**k), ConfigurationError, f"RetryPolicy.{name}")  # type: ignore[misc]
    limits: list[dict[str, Any]] = [
        {"job_timeout": 0}, {"job_timeout": -5}, {"max_redirects": -1}, {"read_timeout": 0},
        {"connect_timeout": math.inf}, {"max_outstanding": True},
    ]  # fmt: skip
    for kwargs in limits:
        name = next(iter(kwargs))
        yield Row(f"Limits-{kwargs}", lambda _, k=kwargs: Limits(**k), ConfigurationError, f"Limits.{name}")  # type: ignore[misc]


def prompt_rows() -> Iterator[Row]:
    cap = catalog.model_spec("toapis", "flux-kontext-pro").max_prompt_bytes
    yield Row("prompt-100MB", submit(prompt="x" * 100_000_000), ValidationError, "prompt")
    yield Row("prompt-over-cap-ascii", submit("apimart", prompt="x" * (cap + 1)), ValidationError, "prompt")
    # Under the cap in characters, over it in bytes of UTF-8 (3 bytes each).
    yield Row("prompt-over-cap-utf8", submit("bfl", prompt="\u20ac" * (cap // 3 + 1)), ValidationError, "prompt")
    yield Row("prompt-grok-1001", submit(model="grok-4-1-image", prompt="y" * 1001), ValidationError, "prompt")


def all_rows(tmp: Path) -> list[Row]:
    return [
        *id_rows(), *codec_rows(), *image_rows(tmp), *extra_rows(), *base_url_rows(), *policy_rows(),
        *prompt_rows(),
    ]  # fmt: skip


# The rows are made when the module is collected, so their directory is made then too.
_TMP = Path(tempfile.mkdtemp(prefix="flux-async-bad-input-"))
ROWS = all_rows(_TMP)


@pytest.fixture(scope="module", autouse=True)
def _directory() -> Iterator[None]:
    yield
    shutil.rmtree(_TMP, ignore_errors=True)


async def run(call: Call, transport: NoSend) -> None:
    result = call(transport)
    if inspect.isawaitable(result):
        await result


@pytest.mark.anyio
@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
async def test_bad_input_is_refused_naming_the_field_and_nothing_is_sent(
    row: Row, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLUX_ASYNC_BASE_URL", raising=False)
    transport = NoSend()
    with pytest.raises(FluxError) as info:
        await run(row.call, transport)
    error = info.value
    assert type(error) is row.error, f"{type(error).__name__}: {error}"
    assert row.field in str(error)
    if isinstance(error, ValidationError):
        assert error.field == row.field
    assert KEY not in str(error)
    assert transport.sent == []


def test_the_table_covers_every_id_place() -> None:
    # A task id reaches a URL through a TaskRef (made by the caller or a codec), a codec's
    # build_poll and toapis' build_lookup: each has rows above.
    ids = {row.id.split("-")[0] for row in ROWS}
    assert {"get_task", "resume", "TaskRef", "build_poll", "build_lookup"} <= ids


@pytest.mark.anyio
async def test_a_base_url_from_the_environment_is_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUX_ASYNC_BASE_URL", "http://user:pass@127.0.0.1:9")
    with pytest.raises(ConfigurationError, match="FLUX_ASYNC_BASE_URL") as info:
        Session("toapis", api_key=KEY, transport=NoSend())
    assert "pass" not in str(info.value).replace("password", "")


def test_wire_fields_cover_what_the_codecs_write() -> None:
    # extra is refused on the fields the library writes: the catalog's list must hold every
    # field a codec writes for a request with every option set.
    for provider in catalog.PROVIDERS:
        codec = get_codec(provider, api_key=KEY)
        for model in catalog.models_for(provider):
            spec = catalog.model_spec(provider, model)
            fields: dict[str, Any] = {"size": spec.default_size, "images": ["https://x.test/a.png"]}
            if spec.n_values:
                fields["n"] = spec.n_values[-1]
            if spec.response_formats:
                fields["response_format"] = spec.response_formats[0]
            if spec.safety_tolerance:
                fields["safety_tolerance"] = 2
            if spec.prompt_upsampling:
                fields["prompt_upsampling"] = True
            if spec.seed:
                fields["seed"] = 1
            request = catalog.validate(GenerationRequest(model=model, prompt="p", **fields), provider)
            body = codec.build_submit(request, client_business_id="job-1").json
            written = {f"{key}.{sub}" for key, value in body.items() if isinstance(value, dict) for sub in value}
            written |= {key for key, value in body.items() if not isinstance(value, dict)}
            assert written <= spec.wire_fields | {"model"}, (provider, model, written - spec.wire_fields)


# -- the command line ----------------------------------------------------------------------------


class Listener:
    """A socket on 127.0.0.1 that counts the connections made to it (and closes them)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture(scope="module")
def listener() -> Iterator[Listener]:
    made = Listener()
    yield made
    made.close()


class CliRow(NamedTuple):
    id: str
    args: Callable[[str], list[str]]  # given the listener's URL
    shows: str  # in the error line


def conn(url: str, provider: str = "toapis") -> list[str]:
    return ["--provider", provider, "--api-key", KEY, "--base-url", url]


CLI_ROWS = [
    *(CliRow(f"status-{name}", lambda u, t=task_id: ["status", t, *conn(u)], "task_id") for name, task_id in BAD_IDS.items() if isinstance(task_id, str)),  # type: ignore[misc]
    CliRow("status-bfl-bare-id", lambda u: ["status", "..", *conn(u, "bfl")], "polling_url"),
    CliRow("status-bfl-polling-url-id", lambda u: ["status", f"{u}/v1/get_result?id=../x", *conn(u, "bfl")], "task_id"),
    CliRow("base-url-credentials", lambda u: ["status", "abc", *conn(u.replace("//", "//user:pass@"))], "--base-url"),
    CliRow("base-url-query", lambda u: ["status", "abc", *conn(u + "/?key=1")], "--base-url"),
    CliRow("base-url-scheme", lambda u: ["status", "abc", *conn(u.replace("http", "ftp"))], "--base-url"),
    CliRow("base-url-garbage", lambda u: ["status", "abc", *conn("garbage")], "--base-url"),
    CliRow("image-nul", lambda u: ["generate", "p", "--image", "cat\x00.png", "-o", str(_TMP), *conn(u)], "images[0]"),
    CliRow("image-missing", lambda u: ["generate", "p", "--image", str(_TMP / "missing.png"), "-o", str(_TMP), *conn(u)], "images[0]"),
    CliRow("image-directory", lambda u: ["generate", "p", "--image", str(_TMP), "-o", str(_TMP), *conn(u)], "images[0]"),
    CliRow("prompt-over-cap", lambda u: ["generate", "x" * 40_000, "-o", str(_TMP), *conn(u)], "prompt"),
    CliRow("upload-directory", lambda u: ["upload", str(_TMP), *conn(u)], "PATH"),
]  # fmt: skip


@pytest.mark.parametrize("row", CLI_ROWS, ids=[row.id for row in CLI_ROWS])
def test_bad_input_on_the_command_line_is_one_error_and_a_usage_exit(row: CliRow, listener: Listener) -> None:
    before = listener.connections
    env = dict.fromkeys(("TOAPIS_API_KEY", "APIMART_API_KEY", "BFL_API_KEY", "FLUX_ASYNC_API_KEY", "FLUX_ASYNC_BASE_URL"))
    result = CliRunner().invoke(cli, row.args(listener.url), env=env)
    assert result.exit_code == EXIT_USAGE, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith(("error:", "Error:"))]
    assert len(errors) == 1, result.stderr
    assert row.shows in errors[0]
    assert KEY not in result.output
    assert listener.connections == before
