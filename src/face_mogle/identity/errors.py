"""The one error type of identity conditioning: a one-line message meant for the user."""

from __future__ import annotations


class IdentityError(ValueError):
    """A reference face or an identity encoder that cannot be used; one line naming the file or value
    and what was expected."""
