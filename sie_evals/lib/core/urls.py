"""URLs that may carry credentials (`https://user:password@host/...`): every URL that is printed,
logged or written goes through `redact_url`, and text that may quote one (an exception message)
through `redact_text`."""

from urllib.parse import unquote, urlsplit, urlunsplit

REDACTED = "***"


def redact_url(url: str) -> str:
    """`url` with its user info replaced by ***; anything that does not parse is redacted up to the
    last '@' before the path, so a malformed URL cannot leak either."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
    except ValueError:
        parts, netloc = None, ""
    if parts is None or "@" not in netloc:
        head, sep, rest = url.partition("://")
        authority, slash, path = rest.partition("/")
        if sep and "@" in authority:
            return f"{head}://{REDACTED}@{authority.rpartition('@')[2]}{slash}{path}"
        return url
    return urlunsplit(parts._replace(netloc=f"{REDACTED}@{netloc.rpartition('@')[2]}"))


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """The URL without user info, and (user, password) decoded from it, if any: HTTP clients that
    do not understand user info in URLs (urllib, http.client) get it as a Basic auth header instead."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=hostport)), (unquote(user), unquote(password))


def redact_text(text: str, url: str) -> str:
    """`text` with `url`'s user info (raw and percent-decoded) and the URL itself replaced by their
    redacted forms: for exception messages that may quote either."""
    text = text.replace(url, redact_url(url))
    try:
        userinfo = urlsplit(url).netloc.rpartition("@")[0]
    except ValueError:
        userinfo = url.partition("://")[2].partition("/")[0].rpartition("@")[0]
    password = userinfo.partition(":")[2]
    secrets = {userinfo, unquote(userinfo), password, unquote(password)}  # the user name alone is no secret
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text
