"""docs/http.md's curl examples run as written, against real servers on loopback, and print
what the page shows: each ``<!-- example: open -->`` block on a server without callers, each
``<!-- example: callers -->`` block on one with the page's callers file, in the page's
order, one seller for the whole page (``seller-1`` there, a new one each run).

Each ``$ curl`` line is run by its equivalent with ``http.client`` (``-s``, ``-X``, ``-H``,
``-d``, the URL: what the page uses), so curl need not be installed; the body it answers
is compared with the lines that follow. Only what changes from run to run is set aside: the
seller's id, the server's port, and a page token (shown ``<token>``).
``HTTP_DOC_WRITE=1 pytest tests/test_http_doc.py`` writes the real outputs into the page
instead.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import re
import shlex
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from support import new_id

from quota_authority.api.callers import Caller

PAGE = Path(__file__).resolve().parent.parent / "docs" / "http.md"
DOC_ADDRESS = "127.0.0.1:8080"
DOC_SELLER = re.compile(r"\bseller-1\b")
TOKEN = re.compile(r'"nextPageToken": "[^"]+"')
BLOCK = re.compile(r"^<!-- example: (open|callers) -->\n```console\n(.*?)^```\n", re.M | re.S)
CALLERS = (
    Caller("dashboards", frozenset({"reader"}), token="reader-token-0123456789"),
    Caller("invites", frozenset({"outreach"}), token="outreach-token-0123456789"),
)


def commands(block: str) -> list[tuple[str, list[str]]]:
    """Each ``$`` line of a console block with the output lines that follow it."""
    found: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            found.append((line[2:], []))
        else:
            found[-1][1].append(line)
    return found


def _curl(command: str, port: int) -> str:
    """What ``curl -s`` prints for ``command`` (the options the page uses) at ``port``."""
    args = shlex.split(command)
    assert args[0] == "curl", command
    method, headers, data, url = None, {}, None, None
    rest = iter(args[1:])
    for arg in rest:
        if arg == "-s":
            continue
        if arg == "-X":
            method = next(rest)
        elif arg == "-H":
            name, _, value = next(rest).partition(":")
            headers[name.strip()] = value.strip()
        elif arg == "-d":
            data = next(rest).encode()
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        elif arg.startswith("http://"):
            url = urlsplit(arg)
        else:
            raise AssertionError(f"an option the check does not know: {arg} in {command}")
    assert url is not None, command
    assert url.netloc == DOC_ADDRESS, command
    method = method or ("POST" if data is not None else "GET")
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        target = url.path + (f"?{url.query}" if url.query else "")
        connection.request(method, target, body=data, headers=headers)
        return connection.getresponse().read().decode()
    finally:
        connection.close()


async def test_the_pages_curl_examples_print_what_it_shows(start_server: Any, clock: Any) -> None:
    servers = {
        "open": (await start_server(http_listen="127.0.0.1:0"))[0],
        "callers": (await start_server(http_listen="127.0.0.1:0", callers=CALLERS))[0],
    }
    seller = new_id("seller")
    page = PAGE.read_text(encoding="utf-8")
    blocks = list(BLOCK.finditer(page))
    assert len(blocks) >= 4, "the page's examples were not found"

    written: list[tuple[re.Match[str], str]] = []
    mismatches = []
    for block in blocks:
        server = servers[block.group(1)]
        lines = []
        for command, shown in commands(block.group(2)):
            # A second between the page's calls, as between a user's: decisions listed in
            # time order are then in the page's order on any engine (on Citus, rows written
            # on different nodes at one instant sort by their nodes' id ranges).
            clock.advance(timedelta(seconds=1))
            run = DOC_SELLER.sub(seller, command)
            printed = await asyncio.to_thread(_curl, run, server.http_port)
            printed = TOKEN.sub('"nextPageToken": "<token>"', printed.replace(seller, "seller-1"))
            lines += [f"$ {command}", *printed.splitlines()]
            if printed.splitlines() != shown:
                mismatches.append((command, shown, printed.splitlines()))
        written.append((block, "\n".join(lines) + "\n"))
    for server in servers.values():
        await server.stop(grace=0)

    if os.environ.get("HTTP_DOC_WRITE") == "1":
        for block, text in reversed(written):
            start, end = block.span(2)
            page = page[:start] + text + page[end:]
        PAGE.write_text(page, encoding="utf-8")
        return
    assert not mismatches, "\n\n".join(
        f"$ {command}\n- shown:   {shown}\n+ printed: {printed}"
        for command, shown, printed in mismatches
    )
