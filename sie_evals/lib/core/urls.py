"""URLs that may carry credentials (`https://user:password@host/...?api_key=...`): every URL that is
printed, logged or written goes through `redact_url` (user info and query values hidden), and text
that may quote one (an exception message) through `redact_text`. A webhook URL's path is itself the
secret (Slack's `/services/T../B../<token>`): it is shown as `webhook_origin` (scheme://host only)
and text that may quote it goes through `redact_webhook_text`."""

from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

REDACTED = "***"


def redact_url(url: str) -> str:
    """`url` with its user info and every query value replaced by ***; anything that does not parse is
    redacted up to the last '@' before the path, and from its '?', so a malformed URL cannot leak either."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
    except ValueError:
        parts, netloc = None, ""
    if parts is None or "@" not in netloc:
        head, sep, rest = url.partition("://")
        authority, slash, path = rest.partition("/")
        if sep and "@" in authority:
            url = f"{head}://{REDACTED}@{authority.rpartition('@')[2]}{slash}{path}"
        if parts is None:
            base, q, _ = url.partition("?")
            return f"{base}?{REDACTED}" if q else url
    else:
        parts = parts._replace(netloc=f"{REDACTED}@{netloc.rpartition('@')[2]}")
    if parts.query:
        # keys stay (they say what was there); values may be tokens (`?key=`, `?sig=`, `?code=`)
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        query = urlencode([(k, REDACTED) for k, _ in pairs], safe="*") if pairs else REDACTED
        parts = parts._replace(query=query)
    return urlunsplit(parts)


def http_url_problem(url: str) -> str | None:
    """Why `url` is not an http(s)://host[:port] URL, in words that never quote it; None when it is one."""
    try:
        parts = urlsplit(url.strip())
        _ = parts.port  # raises for a port that is not a number in range
    except ValueError:
        return "its host or port is malformed (the port must be a number from 0 to 65535)"
    if "://" not in url:
        return "it has no scheme: it must start with http:// or https://"
    if parts.scheme not in ("http", "https"):
        return f"its scheme is {parts.scheme[:20]!r}, not http or https"
    if not parts.hostname:
        return "it has no host"
    return None


def webhook_origin(url: str) -> str:
    """What may be shown of a webhook URL: scheme://host[:port], never user info, path or query."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
        port = parts.port
    except ValueError:
        return "(malformed URL)"
    if not parts.scheme or not host:
        return "(URL without scheme or host)"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


def redact_webhook_text(text: str, url: str) -> str:
    """`text` with anything of the webhook `url` but its origin hidden: the URL itself, its user info,
    path and query, raw and percent-decoded (an exception message may quote any of them)."""
    text = redact_text(text, url)
    stripped = url.strip()
    try:
        parts = urlsplit(stripped)
        pieces = {stripped, url, parts.path, parts.query, parts.fragment, parts.netloc.rpartition("@")[0]}
        pieces |= {v for _, v in parse_qsl(parts.query, keep_blank_values=True)}
    except ValueError:
        pieces = {stripped, url, stripped.partition("://")[2]}
    # a path segment alone is enough to leak a token ("/T0/B0/SECRET" quoted as "SECRET")
    pieces |= {seg for p in list(pieces) for seg in p.split("/") if len(seg) >= 6}
    pieces |= {unquote(p) for p in pieces}
    for piece in sorted((p for p in pieces if len(p) > 1), key=len, reverse=True):
        text = text.replace(piece, REDACTED)
    return text


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
