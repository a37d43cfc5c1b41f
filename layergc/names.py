"""Repository names, by the grammar of distribution's reference package.

    path-component := alpha-numeric (separator alpha-numeric)*
    alpha-numeric  := [a-z0-9]+
    separator      := [_.] | '__' | [-]*
    name           := path-component ('/' path-component)*   (at most 255 chars)
"""

from __future__ import annotations

import re

from layergc.errors import InvalidRepositoryName

MAX_NAME_LENGTH = 255
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$", re.ASCII)


def validate_repository_name(name: str) -> str:
    """Return `name` if it is a valid repository name, else raise InvalidRepositoryName."""
    if not isinstance(name, str) or not name:
        raise InvalidRepositoryName(str(name), "repository name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidRepositoryName(name, f"repository name longer than {MAX_NAME_LENGTH}")
    if _NAME_RE.fullmatch(name) is None:
        raise InvalidRepositoryName(name)
    return name


def is_valid_repository_name(name: str) -> bool:
    try:
        validate_repository_name(name)
    except InvalidRepositoryName:
        return False
    return True


def is_valid_tag(tag: str) -> bool:
    return _TAG_RE.fullmatch(tag) is not None
