"""The ``flux-async`` click group and its small commands: generate, status, upload, emulator, demo.
Part of the command line, never imported by the library; it takes the library's names from
``_api``, and the emulator's only when ``emulator`` runs. ``batch`` is defined in
``_batchcommand`` and added to the group here.

Each command parses its options, opens a :class:`~flux_async.Session` and calls the public
API; the options they share live in ``_options``, the batch engine in ``_batch``, the display
in ``_display``, the shared running and reporting in ``_runtime``, the demo in ``_demo``.
Machine output (file paths, URLs, ``--json``) goes to stdout; progress, notes and errors go to
stderr. API keys come from ``--api-key`` or the environment and are never printed.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import click

from ._api import PROVIDERS, GenerationRequest, TaskState, TaskStatus, __version__
from ._batchcommand import batch
from ._options import (
    connection_options,
    download_all,
    local_images,
    open_session,
    output_options,
    request_options,
)
from ._runtime import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, Output, run_command

__all__ = ["cli"]


# -- the group ---------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="flux-async")
def cli() -> None:
    """Generate images with Flux Kontext and Grok on toapis, apimart and Black Forest Labs.

    One job (generate), a resumable file of thousands (batch), status checks, uploads, a
    local emulator of all three services (emulator) and a self-contained demo (demo).

    Exit codes: 0 success, 1 some job failed, 2 usage or input error, 130 interrupted.
    """


cli.add_command(batch)


# -- generate ----------------------------------------------------------------------------------


@cli.command()
@click.argument("prompt")
@request_options
@click.option(
    "-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
    help="Directory for the images.",
)  # fmt: skip
@connection_options
@output_options
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
    request = GenerationRequest(model=model, prompt=prompt, size=size, n=n, images=local_images(images), seed=seed)
    submitted: list[str] = []

    async def body() -> int:
        started = time.monotonic()
        async with open_session(provider, api_key, base_url) as session:
            job = await session.submit(request)
            submitted.append(job.task_id)
            out.info(f"submitted task {job.task_id} to {provider}")
            spinner = out.err.status(f"waiting for {job.task_id}") if out.interactive else nullcontext()
            with spinner:
                result = await job.result()
            files = await download_all(session, result.images, output, job.task_id)
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
@connection_options
@output_options
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
        async with open_session(provider, api_key, base_url) as session:
            state = await session.get_task(task_id)
            files: list[Path] = []
            if output is not None and state.result is not None:
                files = await download_all(session, state.result.images, output, state.task_id)
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
@connection_options
@output_options
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
        async with open_session(provider, api_key, base_url) as session:
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
@output_options
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
