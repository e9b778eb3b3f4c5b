"""What a PROPFIND body asks for (app/dav/propfind.py), by table: the native listing
answers only bodies it understands, and refuses XML tricks."""

from __future__ import annotations

import pytest

from app.core.errors import BadRequest
from app.dav.propfind import Wanted, parse_body

PROPFIND = '<?xml version="1.0"?><D:propfind xmlns:D="DAV:" xmlns:Z="urn:z">{}</D:propfind>'


@pytest.mark.parametrize(
    ("body", "wanted"),
    [
        ("", Wanted("allprop")),
        ("  \n", Wanted("allprop")),
        (PROPFIND.format("<D:allprop/>"), Wanted("allprop")),
        (PROPFIND.format("<D:propname/>"), Wanted("propname")),
        (
            PROPFIND.format("<D:prop><D:getetag/><Z:colour/></D:prop>"),
            Wanted("prop", ("{DAV:}getetag", "{urn:z}colour")),
        ),
        (PROPFIND.format("<D:prop/>"), Wanted("prop", ())),
    ],
)
def test_bodies_it_understands(body: str, wanted: Wanted) -> None:
    assert parse_body(body.encode()) == wanted


@pytest.mark.parametrize(
    "body",
    [
        "<not xml",
        '<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:"/>',  # another method's body
        PROPFIND.format(""),  # names nothing
        '<?xml version="1.0"?><!DOCTYPE p [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        '<D:propfind xmlns:D="DAV:"><D:prop><D:displayname>&x;</D:displayname></D:prop>'
        "</D:propfind>",
        '<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;">]>'
        '<D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>',
    ],
)
def test_bodies_it_refuses(body: str) -> None:
    with pytest.raises(BadRequest):
        parse_body(body.encode())
