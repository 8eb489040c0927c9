"""A Milvus address or image location that carries a password: no part of the password is
ever shown, whatever characters it holds (issue 22: ``/``, ``#``, ``?``, ``@`` or a space
ended the URL's host part early, and pieces of the password were printed in "Bad port" and
"carries credentials" messages). No server needed: every case is refused while parsing.
"""

from __future__ import annotations

import logging

import pytest

from indexer.errors import CollectionError
from indexer.stores import canonical_spec, open_collection, server_of
from indexer.stores.milvus.address import MilvusAddress, redact_address
from indexer.stores.milvus.images import open_images, redact_userinfo, refuse_credentials

#: Passwords with each character that ends a URL's host part early, and mixes of them.
PASSWORDS = [
    "se/cret9",
    "se#cret9",
    "se?cret9",
    "se@cret9",
    "se cret9",
    "p/a#b?c@d e",
    "@/#? ",
    "9/x?images=/tmp#y@z",
    "19530/docs?images=s3://b",
    "[v6/cret",
]
USERS = ["", "root:", "alice:"]


def _fragments(secret: str) -> list[str]:
    """Pieces of ``secret`` that must not show: each run of 3+ characters between the
    delimiters, and the whole."""
    pieces = [secret]
    for sep in "/#?@ []:":
        secret = secret.replace(sep, "\n")
    pieces += [piece for piece in secret.split("\n") if len(piece) >= 3]
    return pieces


def _assert_hidden(message: str, user: str, secret: str, public: str = "") -> None:
    """No piece of ``secret`` (nor the user name) in ``message``, except a piece that is
    also in ``public``, the address without its ``user:secret@`` part."""
    for piece in _fragments(secret):
        if piece not in public:
            assert piece not in message, (piece, message)
    if len(user.strip(":")) >= 3:
        assert user.strip(":") not in message, message


def _addresses(user: str, secret: str) -> list[str]:
    userinfo = f"{user}{secret}@"
    return [
        f"milvus://{userinfo}host:19530/docs",
        f"milvuss://{userinfo}host:19530/docs",
        f"milvus://{userinfo}host/docs",
        f"milvus://{userinfo}host:notaport/docs",
        f"milvus://{userinfo}/docs",
        f"milvus://{userinfo}host:19530/has-dash",
        f"milvus://{userinfo}host:19530/docs?images=/srv/pages",
        f"MILVUS://{userinfo}host:19530/docs",
    ]


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("secret", PASSWORDS)
def test_no_part_of_a_password_is_in_any_message(user, secret, caplog):
    """Every address with a ``user:password@`` part is refused as carrying credentials,
    and neither the message, its cause nor any log record holds a piece of the password."""
    caplog.set_level(logging.DEBUG)
    for address in _addresses(user, secret):
        public = address.replace(f"{user}{secret}@", "")
        with pytest.raises(CollectionError) as err:
            MilvusAddress.parse(address)
        message = str(err.value)
        assert "carries credentials" in message and "PAGELENS_MILVUS_TOKEN" in message, message
        _assert_hidden(message, user, secret, public)
        for cause in (err.value.__cause__, err.value.__context__):
            assert cause is None or secret not in str(cause)
        for call in (canonical_spec, server_of, open_collection):
            with pytest.raises(CollectionError) as again:
                call(address)
            _assert_hidden(str(again.value), user, secret, public)
        _assert_hidden(redact_address(address), user, secret, public)
        for record in caplog.records:
            _assert_hidden(record.getMessage(), user, secret, public)


def test_the_issue_example_shows_only_what_follows_the_last_at():
    address = "milvus://u:p/a#b?c@d e@host:19530/col"
    with pytest.raises(CollectionError) as err:
        MilvusAddress.parse(address)
    message = str(err.value)
    assert "'milvus://***@host:19530/col' carries credentials" in message, message
    for piece in ("u:p", "p/a", "#b", "?c", "c@d", "d e", "/a#"):
        assert piece not in message
    from typer.testing import CliRunner

    from app.cli import cli

    result = CliRunner().invoke(cli, ["--collection", address, "docs"])  # as a user sees it
    assert result.exit_code == 1 and "milvus://***@host:19530/col" in result.output
    for piece in ("u:p", "p/a", "#b", "?c", "c@d", "d e", "/a#"):
        assert piece not in result.output, result.output


@pytest.mark.parametrize("secret", PASSWORDS)
def test_an_image_location_with_any_password_is_refused_and_never_echoed(secret, tmp_path):
    """``s3://KEY:SECRET@bucket/...`` with any character in the secret, given directly (or
    through PAGELENS_MILVUS_IMAGES) or percent-encoded in an address's ``?images=``."""
    from urllib.parse import quote

    location = f"s3://AKIAEXAMPLE:{secret}@bucket/pages"
    for call in (refuse_credentials, lambda loc: open_images(loc, tmp_path)):
        with pytest.raises(CollectionError, match="carries credentials") as err:
            call(location)
        _assert_hidden(str(err.value), "AKIAEXAMPLE:", secret)
    encoded = quote(location, safe="")  # no raw '@' in the address: decoded by parse_qs
    with pytest.raises(CollectionError, match="carries credentials") as err:
        MilvusAddress.parse(f"milvus://127.0.0.1:19530/docs?images={encoded}")
    _assert_hidden(str(err.value), "AKIAEXAMPLE:", secret)


def test_redaction_keeps_what_cannot_be_a_secret():
    assert redact_userinfo("milvus://host:19530/docs") == "milvus://host:19530/docs"
    assert redact_userinfo("/srv/pages") == "/srv/pages"
    assert redact_userinfo("s3://k:s/e#c?r@e t@bucket/p") == "s3://***@bucket/p"
    assert redact_userinfo("u:secret@host") == "***@host"  # no scheme: from the start
    assert redact_userinfo("milvus:u:secret@host") == "***@host"


def test_addresses_without_credentials_still_parse():
    address = MilvusAddress.parse("MILVUSS://Host.Example:19531/docs?images=/srv/a%40b")
    assert (address.host, address.port, address.name, address.secure) == (
        "host.example",
        19531,
        "docs",
        True,
    )
    assert address.images == "/srv/a@b"  # an '@' in a folder, percent-encoded: allowed
    assert MilvusAddress.parse("milvus://h/docs").port == 19530
    with pytest.raises(CollectionError, match="Bad port in Milvus address 'milvus://h:x/d'"):
        MilvusAddress.parse("milvus://h:x/d")
    with pytest.raises(CollectionError, match="is not a Milvus address"):
        MilvusAddress.parse("milvus://[::1/docs")
