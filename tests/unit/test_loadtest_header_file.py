"""`apigate loadtest --header-file`: one request per line, sent in turn (issue 18's matrix)."""

from __future__ import annotations

import pytest

from apigate.loadtest.target import TargetError, build_target


def test_one_request_per_line_each_with_its_header() -> None:
    t = build_target("http://127.0.0.1:8080/api/users", "GET", ["X-A: 1"], None, ["X-User: a", "X-User: b"])
    assert len(t.requests) == 2 and t.request == t.requests[0]
    for req, user in zip(t.requests, (b"a", b"b"), strict=True):
        head, _, body = req.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"GET /api/users HTTP/1.1" and b"X-A: 1" in lines
        assert [x for x in lines if x.startswith(b"X-User")] == [b"X-User: " + user]
        assert body == b""


def test_the_rotating_header_comes_before_content_length() -> None:
    t = build_target("http://h/x", "POST", [], b"hi", ["Authorization: Bearer t1"])
    head = t.requests[0].split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[-2:] == [b"Authorization: Bearer t1", b"Content-Length: 2"]


def test_without_a_file_there_is_one_request() -> None:
    assert len(build_target("http://h/x", "GET", [], None).requests) == 1


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([], "no header lines"),
        (["no colon"], "--header-file line 'no colon' is not 'Name: value'"),
        (["Content-Length: 3"], "set from --body"),
    ],
)
def test_bad_header_files(lines: list[str], message: str) -> None:
    with pytest.raises(TargetError, match=message):
        build_target("http://h/x", "GET", [], None, lines)
