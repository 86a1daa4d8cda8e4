"""The public surface: everything public is exported, sorted, and documented."""

from __future__ import annotations

import inspect

import flux_async
from flux_async import errors


def test_all_is_complete_and_unique() -> None:
    # Its order is ruff's (RUF022): constants, classes, then functions.
    assert len(set(flux_async.__all__)) == len(flux_async.__all__)
    for name in flux_async.__all__:
        assert hasattr(flux_async, name), name
    public_errors = {n for n, v in vars(errors).items() if inspect.isclass(v) and issubclass(v, errors.FluxError)}
    assert public_errors <= set(flux_async.__all__)


def test_every_export_has_a_docstring() -> None:
    for name in flux_async.__all__:
        value = getattr(flux_async, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), name


def test_error_tree_matches_the_design() -> None:
    tree = {
        errors.ConfigurationError: errors.FluxError,
        errors.ValidationError: errors.FluxError,
        errors.TransportError: errors.FluxError,
        errors.TransportTimeout: errors.TransportError,
        errors.ProtocolError: errors.FluxError,
        errors.APIError: errors.FluxError,
        errors.BadRequestError: errors.APIError,
        errors.AuthenticationError: errors.APIError,
        errors.InsufficientCreditsError: errors.APIError,
        errors.NotFoundError: errors.APIError,
        errors.RateLimitError: errors.APIError,
        errors.ServerError: errors.APIError,
        errors.SubmissionUncertainError: errors.FluxError,
        errors.BudgetExceededError: errors.FluxError,
        errors.TaskError: errors.FluxError,
        errors.TaskFailedError: errors.TaskError,
        errors.ModerationError: errors.TaskError,
        errors.TaskNotFoundError: errors.TaskError,
        errors.TaskTimeoutError: errors.TaskError,
    }
    for child, parent in tree.items():
        assert child.__mro__[1] is parent or issubclass(child, parent), child
        assert child.__name__ in (errors.__doc__ or ""), child


def test_status_to_error_class() -> None:
    assert errors.api_error_for_status(400) is errors.BadRequestError
    assert errors.api_error_for_status(422) is errors.BadRequestError
    assert errors.api_error_for_status(401) is errors.AuthenticationError
    assert errors.api_error_for_status(403) is errors.AuthenticationError
    assert errors.api_error_for_status(402) is errors.InsufficientCreditsError
    assert errors.api_error_for_status(404) is errors.NotFoundError
    assert errors.api_error_for_status(429) is errors.RateLimitError
    assert errors.api_error_for_status(503) is errors.ServerError
