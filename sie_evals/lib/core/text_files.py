"""Reading user files as UTF-8 text, so that a stray Latin-1 byte or binary junk is an input error
naming the file, line and column, not a UnicodeDecodeError traceback."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sie_evals.lib.core.errors import InputError


def _position(raw: bytes, offset: int) -> tuple[int, int]:
    """1-based line and column (in bytes) of byte `offset`."""
    line_start = raw.rfind(b"\n", 0, offset) + 1
    return raw.count(b"\n", 0, offset) + 1, offset - line_start + 1


def _not_utf8(path: Path, line: int, column: int, byte: int, error: type[InputError]) -> InputError:
    return error(f"{path}:{line}:{column}: not UTF-8 text (byte 0x{byte:02x}); save the file as UTF-8")


def decode_utf8(raw: bytes, path: Path, error: type[InputError] = InputError) -> str:
    """`raw` decoded as UTF-8 (a leading BOM is dropped), or `error` naming the first bad byte's line."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line, column = _position(raw, err.start)
        raise _not_utf8(path, line, column, raw[err.start], error) from None


def read_utf8(path: Path, error: type[InputError] = InputError) -> str:
    """The whole file as text. OSError is left to the caller (it words 'missing' its own way)."""
    return decode_utf8(Path(path).read_bytes(), path, error)


def utf8_lines(path: Path, error: type[InputError] = InputError, translate_newlines: bool = True) -> Iterator[str]:
    """The file's lines (with their endings), decoded one at a time: a bad byte is reported with its
    line number, and a big file is never held in memory twice. `translate_newlines` turns CRLF into
    LF like text-mode open(); pass False to feed csv.reader (which wants newline='' semantics)."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise _not_utf8(path, lineno, err.start + 1, raw[err.start], error) from None
            if lineno == 1 and text.startswith("\ufeff"):
                text = text[1:]
            if translate_newlines and text.endswith("\r\n"):
                text = text[:-2] + "\n"
            yield text


@contextmanager
def open_utf8(
    path: Path, error: type[InputError] = InputError, translate_newlines: bool = True
) -> Iterator[Iterator[str]]:
    """`with open_utf8(path, DatasetError) as fh: for line in fh: ...`: open() in text mode, but a
    non-UTF-8 byte is `error` naming its line and column."""
    lines = utf8_lines(path, error, translate_newlines)
    try:
        yield lines
    finally:
        lines.close()
