"""What the command-line entry points share: quiet logs, and one line for a library error.

The CLI (`python -m specjax.cli`), `make demo` and the launchers in `experiments/` show
progress bars, results and warnings; INFO logging (orbax logs ~50 lines per checkpoint it
writes, jax logs the backends it could not load, specjax notes what it runs) stays off
unless `--verbose` is given. A library error (bad input, a missing file, a checkpoint that
cannot be used) ends the program with one line, `error: <message>`, instead of a traceback;
`--verbose` brings the traceback back.

    from specjax import console
    if __name__ == "__main__":
        console.run(main)          # instead of absl.app.run(main); adds --verbose
"""

from __future__ import annotations

import difflib
import functools
import logging
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NoReturn


def library_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "this input cannot be used": specjax's own validation (its
    ConfigError, MeshError, TokenizerError ... are ValueErrors), a checkpoint that cannot be
    used, the file system. Imported late: this module must not pull in jax and orbax."""
    from specjax.checkpoints.errors import CheckpointError

    return (ValueError, TypeError, OSError, CheckpointError)


VERBOSE_HELP = "Show the libraries' INFO logs (orbax, jax) and the traceback of an error."


def configure_logging(verbose: bool) -> None:
    """Quiet (default): every logger, specjax's included, shows warnings and errors only
    (progress is what the tqdm bars show). Verbose: INFO logs of every library again."""
    from absl import logging as absl_logging

    # absl's handler writes Python and absl log records to stderr alike; app.run installs it
    # too, the argparse CLI needs it for --verbose.
    absl_logging.use_absl_handler()
    absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.WARNING)
    logging.getLogger("specjax").setLevel(logging.INFO if verbose else logging.WARNING)


def one_line(text: str) -> str:
    """A multi-line message (e.g. a ConfigError listing problems) as one line."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if not lines:
        return ""
    head, items = lines[0], [line.removeprefix("- ") for line in lines[1:]]
    if not items:
        return head
    return f"{head} {'; '.join(items)}" if head.endswith(":") else " ".join([head, *items])


def describe(error: BaseException) -> str:
    """`error` as one line that names the problem."""
    message = one_line(str(error))
    if isinstance(error, KeyError) or not message:
        return f"{type(error).__name__}: {message}" if message else type(error).__name__
    return message


def fail(message: str, code: int = 1) -> NoReturn:
    """End the program: `error: <message>` on stderr, exit status `code`."""
    if code == 1:
        raise SystemExit(f"error: {message}")  # Python prints it to stderr; status 1
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _keys(config: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Every dotted key of a (nested) ConfigDict or dict."""
    keys = []
    for key, value in config.items():
        keys.append(prefix + key)
        if hasattr(value, "items"):
            keys += _keys(value, prefix + key + ".")
    return keys


def unknown_config_override(config: Any, argv: Sequence[str], name: str = "config") -> str | None:
    """The message for the first `--<name>.<key>` of `argv` whose key `config` does not
    have, with the closest existing keys; None if every key exists."""
    if not hasattr(config, "items"):
        return None
    known = _keys(config)
    for arg in argv:
        match = re.match(rf"^--?(?:no)?{re.escape(name)}\.([^=\s]+)", arg)
        if match and match.group(1) not in known:
            key = match.group(1)
            close = difflib.get_close_matches(key, known, n=3)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            return f"unknown config key {key!r} (in {arg}).{hint}"
    return None


def _config_flag_values(argv: Sequence[str]) -> Iterator[tuple[str, Any]]:
    """(name, config) of every ml_collections config-file flag given in `argv`, loaded
    again (get_config is cheap: it builds a ConfigDict) because a failed parse keeps none."""
    from absl import flags

    for name in list(flags.FLAGS):
        parser = flags.FLAGS[name].parser
        if getattr(parser, "flag_type", lambda: "")() != "config object":
            continue
        for i, arg in enumerate(argv):
            value = None
            if arg.startswith(f"--{name}="):
                value = arg.split("=", 1)[1]
            elif arg == f"--{name}" and i + 1 < len(argv):
                value = argv[i + 1]
            if value is not None:
                try:
                    yield name, parser.parse(value)
                except Exception:  # noqa: BLE001 - its own error is reported instead
                    pass


def flag_error_message(error: BaseException, argv: Sequence[str]) -> str:
    """One line for a failed flag parse: a typo'd `--config.<key>` with the closest keys; a
    specjax error raised inside a config file's get_config as its own message (not the
    traceback text ml_collections wraps it in); other flag errors as absl words them."""
    innermost = list(_chain(error))[-1]
    if type(innermost).__module__.startswith("specjax"):
        return describe(innermost)
    for name, config in _config_flag_values(argv):
        message = unknown_config_override(config, argv, name)
        if message:
            return message
    # absl's "flag --x=y: reason"; a traceback text inside it is cut away.
    return one_line(str(error).split("Traceback (most recent call last)")[0]).rstrip(": ")


def _parse_flags(argv: list[str]) -> list[str]:
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except Exception as error:  # noqa: BLE001 - every flag problem is one line
        fail(flag_error_message(error, argv))


def guarded(main: Callable[..., Any], verbose: Callable[[], bool]) -> Callable[..., Any]:
    """`main` that turns a library error into `error: <message>` (exit status 1) and Ctrl-C
    into `interrupted` (130), unless `verbose()`: then the traceback is shown."""

    @functools.wraps(main)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        from absl import app

        try:
            return main(*args, **kwargs)
        except (app.UsageError, *library_errors()) as error:
            if verbose():
                raise
            fail(describe(error))
        except KeyboardInterrupt:
            if verbose():
                raise
            fail("interrupted", 130)

    return wrapped


def run(main: Callable[[list[str]], Any]) -> None:
    """`absl.app.run(main)` with `--verbose`, quiet logs and one-line errors (flag parsing
    included)."""
    from absl import app, flags

    if "verbose" not in flags.FLAGS:
        flags.DEFINE_bool("verbose", False, VERBOSE_HELP)

    def verbose() -> bool:
        return flags.FLAGS.is_parsed() and flags.FLAGS.verbose

    def main_with_logging(argv: list[str]) -> Any:
        configure_logging(verbose())
        return main(argv)

    app.run(guarded(main_with_logging, verbose), flags_parser=_parse_flags)
