"""The click commands of ``flux-async``: generate, batch, status, upload, emulator, demo.

Each command parses its options, opens a :class:`~flux_async.Session` and calls the public
API; the batch engine lives in ``_batch``, the display in ``_display``, the shared running and
reporting in ``_runtime``, the demo in ``_demo``. Machine output (file paths, URLs, ``--json``)
goes to stdout; progress, notes and errors go to stderr. API keys come from ``--api-key`` or
the environment and are never printed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from contextlib import closing, nullcontext
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import anyio
import click

from ._api import (
    PROVIDERS,
    GeneratedImage,
    GenerationRequest,
    Limits,
    Session,
    TaskState,
    TaskStatus,
    __version__,
)
from ._batch import BatchRunner
from ._batchentry import Defaults
from ._batchfile import BatchFileError, CheckReport, check_file, read_entries
from ._display import Counts, ProgressView
from ._journal import JOURNAL_NAME, BatchState, JournalError, JournalHeader, OutputDir, load_state
from ._runtime import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Output,
    Run,
    execute,
    exit_on_error,
    fail,
    report,
    run_command,
    summarize,
)

__all__ = ["cli"]

P = ParamSpec("P")
T = TypeVar("T")

_DEFAULT_MODEL = "flux-kontext-pro"
_MAX_LISTED_ERRORS = 50


# -- shared options ----------------------------------------------------------------------------


def _connection_options(fn: Callable[P, T]) -> Callable[P, T]:
    fn = click.option(
        "--base-url",
        default=None,
        metavar="URL",
        help="Another endpoint: a running emulator, a regional host (or FLUX_ASYNC_BASE_URL).",
    )(fn)
    fn = click.option(
        "--api-key",
        default=None,
        metavar="KEY",
        help="The API key. Default: TOAPIS_API_KEY, APIMART_API_KEY or BFL_API_KEY (by provider), "
        "then FLUX_ASYNC_API_KEY. Never printed.",
    )(fn)
    return click.option(
        "--provider",
        type=click.Choice(PROVIDERS),
        default="toapis",
        envvar="FLUX_ASYNC_PROVIDER",
        show_default=True,
        help="The service to use (or FLUX_ASYNC_PROVIDER).",
    )(fn)


def _output_options(fn: Callable[P, T]) -> Callable[P, T]:
    fn = click.option("-v", "--verbose", count=True, help="Show the library's log (-vv: debug).")(fn)
    fn = click.option("--json", "json_", is_flag=True, help="Machine-readable output on stdout.")(fn)
    return click.option("-q", "--quiet", is_flag=True, help="No progress display, notes or summary.")(fn)


def _request_options(fn: Callable[P, T]) -> Callable[P, T]:
    fn = click.option("--seed", type=int, default=None, help="A seed (BFL only).")(fn)
    fn = click.option("-n", "n", type=int, default=None, help="Images per job (Grok: 1, 2 or 4).")(fn)
    fn = click.option(
        "--image",
        "images",
        multiple=True,
        metavar="PATH|URL",
        help="An input image to edit (repeatable): a local file or an http(s) URL.",
    )(fn)
    fn = click.option("--size", default=None, help="Aspect ratio: 1:1, 16:9, match_input_image...")(fn)
    return click.option(
        "--model",
        default=_DEFAULT_MODEL,
        show_default=True,
        help="flux-kontext-pro, flux-kontext-max, grok-4-1-image or grok-4-2-image.",
    )(fn)


def _local_images(images: Sequence[str]) -> tuple[str, ...]:
    """Image paths on the command line are relative to the working directory."""
    return tuple(
        image if "://" in image or image[:5].lower() == "data:" else os.path.abspath(os.path.expanduser(image))
        for image in images
    )


def _session(provider: str, api_key: str | None, base_url: str | None, limits: Limits | None = None) -> Session:
    return Session(provider, api_key=api_key, base_url=base_url, limits=limits)


def _safe(task_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in task_id)[:120]


async def _download_all(session: Session, images: Sequence[GeneratedImage], directory: Path, task_id: str) -> list[Path]:
    """``<task_id>.<ext>`` (``-<k>`` added when there are several) in ``directory``."""
    await anyio.Path(directory).mkdir(parents=True, exist_ok=True)
    files = []
    for k, image in enumerate(images):
        suffix = f"-{k}" if len(images) > 1 else ""
        # The suffix is a placeholder: the download replaces it with the image's real type.
        files.append(await session.download(image, directory / f"{_safe(task_id)}{suffix}.img"))
    return files


# -- the group ---------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="flux-async")
def cli() -> None:
    """Generate images with Flux Kontext and Grok on toapis, apimart and Black Forest Labs.

    One job (generate), a resumable file of thousands (batch), status checks, uploads, a
    local emulator of all three services (emulator) and a self-contained demo (demo).

    Exit codes: 0 success, 1 some job failed, 2 usage or input error, 130 interrupted.
    """


# -- generate ----------------------------------------------------------------------------------


@cli.command()
@click.argument("prompt")
@_request_options
@click.option(
    "-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
    help="Directory for the images.",
)  # fmt: skip
@_connection_options
@_output_options
def generate(
    prompt: str,
    model: str,
    size: str | None,
    images: tuple[str, ...],
    n: int | None,
    seed: int | None,
    output: Path,
    provider: str,
    api_key: str | None,
    base_url: str | None,
    quiet: bool,
    json_: bool,
    verbose: int,
) -> None:
    """Run one job for PROMPT, wait for it, download its images and print their paths."""
    out = Output.make(quiet=quiet, json_=json_)
    request = GenerationRequest(model=model, prompt=prompt, size=size, n=n, images=_local_images(images), seed=seed)
    submitted: list[str] = []

    async def body() -> int:
        started = time.monotonic()
        async with _session(provider, api_key, base_url) as session:
            job = await session.submit(request)
            submitted.append(job.task_id)
            out.info(f"submitted task {job.task_id} to {provider}")
            spinner = out.err.status(f"waiting for {job.task_id}") if out.interactive else nullcontext()
            with spinner:
                result = await job.result()
            files = await _download_all(session, result.images, output, job.task_id)
        if out.json:
            out.data({
                "task_id": job.task_id,
                "provider": provider,
                "files": [str(f) for f in files],
                "urls": [image.url for image in result.images],
                "seconds": round(time.monotonic() - started, 3),
            })  # fmt: skip
        else:
            for file in files:
                out.data(str(file))
        return EXIT_OK

    try:
        run_command(out, body, verbose=verbose)
    except SystemExit as exc:
        if exc.code == EXIT_INTERRUPTED and submitted:
            out.error(f"task {submitted[0]} may still be running: flux-async status {submitted[0]}")
        raise


# -- batch -------------------------------------------------------------------------------------


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
    help="Directory for the images, results.jsonl and the journal.",
)  # fmt: skip
@_request_options
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=16, show_default=True,
    help="Submissions in flight at once.",
)  # fmt: skip
@click.option(
    "--max-outstanding", type=click.IntRange(min=1), default=512, show_default=True,
    help="Jobs accepted and not yet finished at once.",
)  # fmt: skip
@click.option(
    "--resume", is_flag=True,
    help="Continue the batch in OUTPUT: re-attach to accepted jobs, skip finished ones, submit the rest.",
)  # fmt: skip
@_connection_options
@_output_options
def batch(
    file: Path,
    output: Path,
    model: str,
    size: str | None,
    images: tuple[str, ...],
    n: int | None,
    seed: int | None,
    concurrency: int,
    max_outstanding: int,
    resume: bool,
    provider: str,
    api_key: str | None,
    base_url: str | None,
    quiet: bool,
    json_: bool,
    verbose: int,
) -> None:
    """Run every request of FILE: .txt (a prompt per line), .jsonl (a request object per line)
    or .csv (a header of request fields). Options fill in what a line leaves out.

    The whole file is checked first: bad lines are listed with their line numbers and nothing
    is submitted (exit 2). Images are written to OUTPUT as <index>-<task_id>.<ext>; each
    finished request is appended to OUTPUT/results.jsonl; each accepted task to
    OUTPUT/journal.jsonl before it is waited on, so --resume never pays twice.
    Ctrl-C stops submitting and waits for the jobs in flight; a second Ctrl-C exits at once.
    """
    out = Output.make(quiet=quiet, json_=json_)
    defaults = Defaults(model=model, size=size, n=n, images=_local_images(images), seed=seed)
    limits = Limits(max_concurrent_submits=concurrency, max_outstanding=max_outstanding)
    input_path = os.path.abspath(file)
    with exit_on_error(out):
        # The first pass, before any connection: every line is checked.
        checked = _check_input(out, file, defaults, provider)

    async def body() -> int:
        session = _session(provider, api_key, base_url, limits)  # a missing key stops here
        header = JournalHeader(
            provider=provider,
            input=input_path,
            fingerprint=checked.fingerprint,
            requests=checked.requests,
            defaults=defaults.to_dict(),
        )
        journal, state = _open_output(output, header, resume=resume)
        counts = Counts(
            label=file.name,
            total=checked.requests,
            previous_done=0 if state is None else len(state.finished),
            previous_failed=0 if state is None else state.failed,
        )
        view = ProgressView(out.err, enabled=out.interactive)
        started = time.monotonic()
        # The journal closes after the session: a submit still on the wire when the session
        # shuts down is answered and recorded.
        with closing(journal):
            async with session:
                runner = BatchRunner(
                    session,
                    journal,
                    counts,
                    source=lambda: read_entries(file, defaults),
                    state=state,
                    on_change=view.update,
                )
                view.add(counts)
                with view:
                    flags = await execute([runner], out)
                runs = [Run(counts, runner, session.statistics())]
        summary = summarize(output, runs, time.monotonic() - started, flags)
        report(out, summary, runs, title=f"batch {file.name}")
        return summary.exit_code

    run_command(out, body, verbose=verbose)


def _check_input(out: Output, file: Path, defaults: Defaults, provider: str) -> CheckReport:
    """The first pass over the file: every line checked, every bad one listed; exit 2 if any."""
    try:
        checked = check_file(file, defaults, provider, max_errors=_MAX_LISTED_ERRORS)
    except BatchFileError as exc:
        fail(str(exc), EXIT_USAGE)
    if not checked.ok:
        for problem in checked.errors:
            out.err.print(f"{file}:{problem}", soft_wrap=True, markup=False)
        more = checked.error_count - len(checked.errors)
        if more:
            out.err.print(f"... and {more} more", markup=False)
        fail(
            f"{file}: {checked.error_count} bad line(s) in {checked.requests} request(s); nothing was submitted",
            EXIT_USAGE,
        )
    if checked.requests == 0:
        out.info(f"{file} holds no requests")
    return checked


def _open_output(output: Path, header: JournalHeader, *, resume: bool) -> tuple[OutputDir, BatchState | None]:
    """A new batch directory, or (``--resume`` and a journal there) the existing one."""
    try:
        if resume and (output / JOURNAL_NAME).exists():
            state = load_state(output)
            reason = state.header.mismatch(header)
            if reason is not None:
                fail(f"cannot resume the batch in {output}: {reason}", EXIT_USAGE)
            return OutputDir.reopen(output), state
        return OutputDir.create(output, header), None
    except JournalError as exc:
        fail(str(exc), EXIT_USAGE)


# -- status and upload -------------------------------------------------------------------------


def _state_json(state: TaskState) -> dict[str, Any]:
    def when(value: Any) -> str | None:
        return None if value is None else str(value.isoformat())

    images = state.result.images if state.result is not None else ()
    failure = state.failure
    return {
        "task_id": state.task_id,
        "status": state.status.value,
        "raw_status": state.raw_status,
        "progress": state.progress,
        "estimated_time": state.estimated_time,
        "created_at": when(state.created_at),
        "completed_at": when(state.completed_at),
        "images": [{"url": image.url, "expires_at": when(image.expires_at)} for image in images],
        "failure": None if failure is None else {"code": failure.code, "message": failure.message},
    }


@cli.command()
@click.argument("task_id")
@click.option(
    "-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Also download the images here if the task succeeded.",
)  # fmt: skip
@_connection_options
@_output_options
def status(
    task_id: str,
    output: Path | None,
    provider: str,
    api_key: str | None,
    base_url: str | None,
    quiet: bool,
    json_: bool,
    verbose: int,
) -> None:
    """Check a task once. On BFL, TASK_ID is the task's polling URL.

    Exit code 0 when the task succeeded or is still running, 1 when it ended without an image.
    """
    out = Output.make(quiet=quiet, json_=json_)

    async def body() -> int:
        async with _session(provider, api_key, base_url) as session:
            state = await session.get_task(task_id)
            files: list[Path] = []
            if output is not None and state.result is not None:
                files = await _download_all(session, state.result.images, output, state.task_id)
        info = _state_json(state)
        if out.json:
            out.data({**info, "files": [str(f) for f in files]})
        else:
            line = f"{state.task_id}: {state.status.value} ({state.raw_status})"
            if state.progress is not None and not state.terminal:
                line += f", {state.progress:g}%"
            out.data(line)
            if state.failure is not None:
                code = "" if state.failure.code is None else f" [{state.failure.code}]"
                out.data(f"  failure: {state.failure.message}{code}")
            for image in info["images"]:
                expires = f" (expires {image['expires_at']})" if image["expires_at"] else ""
                out.data(f"  image: {image['url']}{expires}")
            for file in files:
                out.data(f"  file: {file}")
        ended_badly = state.terminal and state.status is not TaskStatus.SUCCEEDED
        return EXIT_FAILED if ended_badly else EXIT_OK

    run_command(out, body, verbose=verbose)


@cli.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_connection_options
@_output_options
def upload(
    path: Path,
    provider: str,
    api_key: str | None,
    base_url: str | None,
    quiet: bool,
    json_: bool,
    verbose: int,
) -> None:
    """Upload a local image and print its URL (toapis and apimart; BFL takes images inline)."""
    out = Output.make(quiet=quiet, json_=json_)

    async def body() -> int:
        async with _session(provider, api_key, base_url) as session:
            url = await session.upload(path)
        out.data({"url": url, "provider": provider} if out.json else url)
        return EXIT_OK

    run_command(out, body, verbose=verbose)


# -- emulator and demo ---------------------------------------------------------------------------


@cli.command()
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="0 picks a free port.")
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option(
    "--scenario", "scenario_text", default=None, metavar="JSON|FILE",
    help="A Scenario as JSON, or a file holding it (default: healthy, instant jobs).",
)  # fmt: skip
@click.option("--json", "json_", is_flag=True, help="Print the address as one JSON line once listening.")
def emulator(port: int, host: str, scenario_text: str | None, json_: bool) -> None:
    """Run the local emulator of toapis, apimart and BFL in the foreground (Ctrl-C stops it)."""
    from ..emulator import DEFAULT_API_KEY, Emulator, Scenario, run_forever

    out = Output.make(quiet=False, json_=json_)
    scenario = None
    if scenario_text is not None:
        try:
            text = Path(scenario_text).read_text(encoding="utf-8") if os.path.isfile(scenario_text) else scenario_text
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("a scenario is a JSON object")
            scenario = Scenario.from_dict(data)
        except (OSError, ValueError, TypeError) as exc:
            out.error(f"--scenario: {exc}")
            raise SystemExit(EXIT_USAGE) from None

    def ready(emu: Emulator) -> None:
        if json_:
            click.echo(json.dumps({"url": emu.url, "port": emu.port, "api_key": DEFAULT_API_KEY}))
            return
        out.err.print(f"emulator listening on {emu.url} (Ctrl-C stops it)")
        for name in PROVIDERS:
            out.err.print(f"  --provider {name:8} --base-url {emu.base_url(name)}")
        out.err.print(f"  test API key: {DEFAULT_API_KEY}")

    try:
        run_forever(port, scenario, host=host, on_ready=ready)
    except OSError as exc:
        out.error(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
        raise SystemExit(EXIT_FAILED) from None


@cli.command()
@click.option(
    "-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Directory for the images (default: a new ./flux-async-demo directory).",
)  # fmt: skip
@click.option("--jobs", type=click.IntRange(3, 300), default=24, show_default=True, help="How many jobs to run.")
@_output_options
def demo(output: Path | None, jobs: int, quiet: bool, json_: bool, verbose: int) -> None:
    """Run a batch on all three services against a local emulator: no key, no network.

    Shows the progress display and writes real images. One prompt is refused by moderation
    on purpose, to show how a failure is reported; that expected failure leaves the exit code
    at 0 (any other failure makes it 1).
    """
    from ._demo import run_demo

    out = Output.make(quiet=quiet, json_=json_)

    async def body() -> int:
        return await run_demo(output, jobs=jobs, out=out)

    run_command(out, body, verbose=verbose)
