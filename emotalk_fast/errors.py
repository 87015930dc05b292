"""The library's errors about what its user gave it: the message says what was wrong and what is
expected. They are ValueError / TypeError too, so callers catch them as usual; the CLI prints them
as one line, and any other exception is a bug that keeps its traceback."""


class UserError(Exception):
    """Bad input, a bad option or a bad file from the user (never a bug in the library)."""


class InvalidInput(UserError, ValueError):
    """A value the library cannot take: wrong shape, rate, range, option or file content."""


class InvalidType(UserError, TypeError):
    """A value of a type the library does not take."""


class MissingProgram(UserError, RuntimeError):
    """A program the library runs (espeak-ng) is not installed: the message says how to install it."""


def install_hint(extra: str) -> str:
    """How to install an extra's packages: by name (from the installed package's metadata, so
    pyproject.toml stays their one list), and as the extra from a clone. The project is not on a
    package index, so its name with an extra would not resolve there."""
    names = _extra_packages(extra)
    clone = f'pip install -e ".[{extra}]" in the emotalk_fast clone'
    return f"pip install {' '.join(names)} ({clone})" if names else clone


def _extra_packages(extra: str, seen: frozenset = frozenset()) -> list[str]:
    import importlib.metadata
    import re

    try:
        requires = importlib.metadata.metadata("emotalk-fast").get_all("Requires-Dist") or []
    except importlib.metadata.PackageNotFoundError:
        return []
    names = []
    for r in requires:
        if not re.search(rf"extra == .{re.escape(extra)}.", r):
            continue
        name = re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0]
        if name != "emotalk-fast":
            names.append(name)
            continue
        for other in re.search(r"\[([^\]]*)\]", r).group(1).split(","):  # an extra made of extras
            if other not in seen | {extra}:
                names += [n for n in _extra_packages(other, seen | {extra}) if n not in names]
    return names
