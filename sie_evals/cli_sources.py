"""The CLI's server-URL options, derived from the source table (lib/core/sources.py): one
`--<source>-url` per row that takes a server URL, and `--server-url SOURCE=URL` (repeatable) for any
row, a source registered at run time included. A command reads them back with `server_urls(params)`."""

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Annotated, Any

import typer

from sie_evals.lib.core.sources import server_urls_from, url_sources

SERVER_URL = "server_url"


def _url_parameters() -> list[inspect.Parameter]:
    params = [
        inspect.Parameter(
            spec.url_field,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[str | None, typer.Option(spec.url_option, help=spec.url_option_help)],
        )
        for spec in url_sources()
    ]
    params.append(
        inspect.Parameter(
            SERVER_URL,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                list[str] | None,
                typer.Option(
                    "--server-url",
                    metavar="SOURCE=URL",
                    help="A running server for SOURCE (repeatable): any source that takes a URL, including one "
                    "registered at run time; same as --SOURCE-url.",
                ),
            ],
        )
    )
    return params


def server_url_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the URL options to a typer command's signature. A command with a `server_urls` parameter gets
    them as one source -> URL dict there; another reads them from `ctx.params` with `server_urls`."""
    extra = _url_parameters()
    signature = inspect.signature(command)
    takes_dict = "server_urls" in signature.parameters
    kept = [p for p in signature.parameters.values() if p.name != "server_urls"]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = {param.name: kwargs.pop(param.name, None) for param in extra}
        if takes_dict:
            kwargs["server_urls"] = server_urls(given)
        return command(*args, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=[*kept, *extra])  # type: ignore[attr-defined]
    return wrapper


def server_urls(params: Mapping[str, Any]) -> dict[str, str]:
    """source -> URL from a command's parsed options; bad input is an InputError naming the option."""
    return server_urls_from(params, params.get(SERVER_URL) or ())
