"""Passwords hidden in what the exporter prints (exporter.db.redact), without garbling the message."""

from __future__ import annotations

import pytest

from exporter.db import redact

REFUSED = ('connection failed: connection to server at "127.0.0.1", port 1 failed: Connection refused\n'
           "\tIs the server running on that host and accepting TCP/IP connections?")


@pytest.mark.parametrize("password", ["p", "server", "on", "1", "TCP"])
def test_a_password_that_is_part_of_the_message_leaves_it_readable(password: str) -> None:
    # Masking every occurrence turned "port 1" into "***ort 1" for the password "p": the message was
    # garbled and the places of *** gave the password away.
    assert redact(REFUSED, f"postgresql://u:{password}@127.0.0.1:1/db") == REFUSED


def test_a_password_quoted_by_libpq_is_hidden() -> None:
    url = "postgresql://u:p%zzq@127.0.0.1:1/db"
    assert redact('invalid percent-encoded token: "p%zzq"\n', url) == 'invalid percent-encoded token: "***"\n'


@pytest.mark.parametrize(("text", "shown"), [
    ("postgresql://u:s3cret@db:5432/ai", "postgresql://u:***@db:5432/ai"),
    ("host=db password=s3cret user=u", "host=db password=*** user=u"),
    ("host=db password='s 3cret' user=u", "host=db password=*** user=u"),
])
def test_urls_and_conninfo_strings_are_masked(text: str, shown: str) -> None:
    assert redact(text) == shown
    assert redact(f"cannot connect to {text}: refused", text) == f"cannot connect to {shown}: refused"
