"""Secrets kept out of what the tool prints and writes.

- Credentials in a URL (`http://alice:S3cret@host`) are masked in every message and log.
- Command lines of the processes a run sees (any user's) go into snapshots and OTLP resources.
  By default (`--cmdline redact`) the values of arguments that look like secrets are replaced
  by `***`: `--password=x`, `--token x`, `-p` never (too ambiguous), `API_KEY=x`, and the
  userinfo of URLs. `--cmdline full` keeps them whole, `--cmdline omit` drops command lines.
  docs/security.md says what is collected.
"""

from __future__ import annotations

import functools
import re

__all__ = ["MASK", "mask_userinfo", "redact_cmdline"]

MASK = "***"

# `//user:password@` or `//token@` in a URL, with or without a scheme before it.
_USERINFO = re.compile(r"//[^/?#@\s]+@")


def mask_userinfo(text: str) -> str:
    """`text` with the credentials of every URL in it replaced by `***`."""
    return _USERINFO.sub(f"//{MASK}@", text)


# A name that says its value is a secret: password, passwd, pwd, secret, token, key (api-key,
# private_key, access-key-id...), credential(s), auth (authorization), cookie, session.
_SECRET_NAME = re.compile(
    r"(passw(or)?d|\bpwd|secret|token|(^|[-_.])(api|access|private|secret|auth|encryption)?"
    r"[-_.]?key(s|[-_.]?id)?$|credential|auth(orization)?$|cookie|session)",
    re.IGNORECASE,
)


def _is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name.lstrip("-")))


# Command lines redacted lately: the agent redacts every process's command line at every
# interval, and on a host starting short processes without pause the same few commands come
# back thousands of times (their regular expressions were a fifth of an interval's export).
REDACTED_KEPT = 2048


def redact_cmdline(args: tuple[str, ...], policy: str) -> tuple[str, ...]:
    """A command line as `policy` ("redact", "full" or "omit") wants it kept."""
    if policy == "full":
        return args
    if policy == "omit":
        return ()
    return _redacted(tuple(args))


@functools.lru_cache(maxsize=REDACTED_KEPT)
def _redacted(args: tuple[str, ...]) -> tuple[str, ...]:
    out: list[str] = []
    secret_follows = False
    for arg in args:
        if secret_follows:
            out.append(MASK)
            secret_follows = False
            continue
        out.append(_redact_arg(arg))
        # `--password hunter2`: the flag alone, its value in the next argument.
        secret_follows = arg.startswith("-") and "=" not in arg and _is_secret_name(arg)
    return tuple(out)


# `name=value` inside a longer argument (`sh -c "curl --token=x ..."`).
_INLINE = re.compile(
    r"(?P<name>[\w.-]*(passw(or)?d|secret|token|api[-_.]?key|credential)[\w.-]*=)"
    r"(?P<value>[^\s'\"&;|]+)",
    re.IGNORECASE,
)


def _redact_arg(arg: str) -> str:
    name, eq, value = arg.partition("=")
    if eq and value and _is_secret_name(name) and " " not in name:
        return f"{name}={MASK}"  # --password=x, -Dapi.key=x, API_TOKEN=x
    return _INLINE.sub(lambda m: m.group("name") + MASK, mask_userinfo(arg))
