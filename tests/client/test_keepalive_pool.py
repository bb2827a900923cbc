"""The load generator's keep-alive connections against a real socket server with scripted replies."""

from __future__ import annotations

import asyncio
import socket

import httptools
import pytest

from shoal.client.keepalive_pool import KeepAlivePool, build_post_request


class _Server:
    """An HTTP/1.1 server whose reply depends on the request path; counts connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.bodies: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                path = request_line.split(" ")[1]
                headers = dict(line.split(": ", 1) for line in header_lines if line)
                body = await reader.readexactly(int(headers["Content-Length"]))
                self.bodies.append(body)
                if path == "/hangup":  # the server dies mid-request
                    writer.close()
                    return
                if path == "/silent":
                    await asyncio.sleep(3600)
                if path == "/chunked":
                    reply = b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nInference-Header-Content-Length: 2\r\n\r\n3\r\n{}x\r\n2\r\nyz\r\n0\r\n\r\n'
                else:
                    payload = b'{"status": "' + path.encode() + b'"}'
                    close = b"Connection: close\r\n" if path == "/close" else b""
                    status = b"429 Too Many Requests" if path == "/busy" else b"200 OK"
                    reply = b"HTTP/1.1 " + status + b"\r\nContent-Length: " + str(len(payload)).encode() + b"\r\n" + close + b"\r\n" + payload
                writer.write(reply)
                await writer.drain()
                if path == "/close":
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


async def _with_server(scenario):
    server = _Server()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        return await scenario(server, port)
    finally:
        listener.close()


def _pool(port: int, path: str, body: bytes = b"payload", **options) -> KeepAlivePool:
    host, port, request = build_post_request(f"http://127.0.0.1:{port}{path}", body, {"Content-Type": "application/octet-stream"})
    return KeepAlivePool(host, port, request, max_connections=options.get("max_connections", 8), connect_timeout_s=1.0,
                         reply_header="Inference-Header-Content-Length")  # fmt: skip


async def _send(pool: KeepAlivePool) -> tuple:
    future = asyncio.get_running_loop().create_future()
    pool.send(lambda *reply: future.set_result(("reply", *reply)), lambda kind: future.set_result(("error", kind)))
    return await asyncio.wait_for(future, 5.0)


def test_the_prebuilt_request_is_valid_http_with_the_body_and_headers():
    _, _, request = build_post_request("http://example.test:8000/v2/models/m/infer", b"\x00\x01body", {"Inference-Header-Content-Length": "4"})
    seen: dict = {"headers": {}, "body": b""}

    class Callbacks:
        def on_url(self, url):
            seen["url"] = url

        def on_header(self, name, value):
            seen["headers"][name.decode().lower()] = value.decode()

        def on_body(self, body):
            seen["body"] += body

    parser = httptools.HttpRequestParser(Callbacks())
    parser.feed_data(request)
    assert parser.get_method() == b"POST" and seen["url"] == b"/v2/models/m/infer"
    assert seen["headers"] == {"host": "example.test:8000", "content-length": "6", "inference-header-content-length": "4"}
    assert seen["body"] == b"\x00\x01body"


@pytest.mark.parametrize("url", ["https://host/x", "host:80/x", "http:///x"])
def test_only_plain_http_urls_with_a_host_are_accepted(url):
    with pytest.raises(ValueError, match="http://host"):
        build_post_request(url, b"", {})


def test_sequential_requests_reuse_one_connection():
    async def scenario(server, port):
        pool = _pool(port, "/ok")
        replies = [await _send(pool) for _ in range(5)]
        await pool.close()
        return server, replies, pool.in_flight

    server, replies, in_flight = asyncio.run(_with_server(scenario))
    assert replies == [("reply", 200, b'{"status": "/ok"}', None)] * 5
    assert server.connections == 1 and server.bodies == [b"payload"] * 5
    assert in_flight == 0


def test_connections_opened_beforehand_serve_the_first_requests_without_new_connects():
    async def scenario(server, port):
        pool = _pool(port, "/ok", max_connections=8)
        opened = await pool.open_connections(12)  # capped at max_connections
        replies = await asyncio.gather(*(_send(pool) for _ in range(8)))
        again = await pool.open_connections(8)  # all open already
        await pool.close()
        return opened, server.connections, replies, again

    opened, after, replies, again = asyncio.run(_with_server(scenario))
    assert opened == 8 and again == 0
    assert [reply[:2] for reply in replies] == [("reply", 200)] * 8
    assert after == 8  # no connection beyond those opened first


def test_concurrent_requests_open_a_connection_each_and_all_are_answered():
    async def scenario(server, port):
        pool = _pool(port, "/busy")
        replies = await asyncio.gather(*(_send(pool) for _ in range(4)))
        await pool.close()
        return server, replies

    server, replies = asyncio.run(_with_server(scenario))
    assert [reply[:2] for reply in replies] == [("reply", 429)] * 4
    assert server.connections == 4


def test_a_chunked_reply_is_reassembled_with_its_header_length():
    async def scenario(server, port):
        pool = _pool(port, "/chunked")
        reply = await _send(pool)
        await pool.close()
        return reply

    assert asyncio.run(_with_server(scenario)) == ("reply", 200, b"{}xyz", "2")


def test_a_connection_the_server_closes_is_not_reused():
    async def scenario(server, port):
        pool = _pool(port, "/close")
        replies = [await _send(pool) for _ in range(3)]
        await pool.close()
        return server, replies

    server, replies = asyncio.run(_with_server(scenario))
    assert [reply[:2] for reply in replies] == [("reply", 200)] * 3
    assert server.connections == 3


def test_a_server_hanging_up_mid_request_is_one_error_and_the_pool_recovers():
    async def scenario(server, port):
        pool = _pool(port, "/hangup")
        failed = await _send(pool)
        pool.request = build_post_request(f"http://127.0.0.1:{port}/ok", b"again", {})[2]
        recovered = await _send(pool)
        await pool.close()
        return failed, recovered, pool.in_flight

    failed, recovered, in_flight = asyncio.run(_with_server(scenario))
    assert failed == ("error", "ServerDisconnectedError")
    assert recovered[:2] == ("reply", 200) and in_flight == 0


def test_a_refused_connection_is_an_error_named_by_its_cause():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused

        async def scenario():
            pool = _pool(port, "/ok")
            result = await _send(pool)
            await pool.close()
            return result, pool.in_flight

        assert asyncio.run(scenario()) == (("error", "ConnectionRefusedError"), 0)


def test_closing_the_pool_silences_what_is_still_in_flight():
    async def scenario(server, port):
        pool = _pool(port, "/silent")
        calls = []
        pool.send(lambda *reply: calls.append(reply), lambda kind: calls.append(kind))
        finished = await pool.wait_all_done(0.3)
        await pool.close()
        await asyncio.sleep(0.1)  # time for connection_lost to run
        return finished, calls

    finished, calls = asyncio.run(_with_server(scenario))
    assert finished is False and calls == []


def test_a_callback_that_raises_is_counted_once_and_the_pool_stays_usable():
    async def scenario(server, port):
        pool = _pool(port, "/ok")
        errors: list[str] = []

        def explode(*reply):
            raise RuntimeError("caller bug")

        pool.send(explode, errors.append)
        finished = await pool.wait_all_done(2.0)
        in_flight_after = pool.in_flight
        again = await _send(pool)
        await pool.close()
        return finished, in_flight_after, errors, again, server.connections

    finished, in_flight_after, errors, again, connections = asyncio.run(_with_server(scenario))
    assert finished and in_flight_after == 0 and errors == []  # not turned into a second outcome
    assert again[:2] == ("reply", 200) and connections == 1


def test_a_reply_nobody_asked_for_closes_the_connection_without_touching_the_count():
    async def scenario():
        async def chatty(reader, writer):  # answers twice to one request
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(7)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            await asyncio.sleep(0.5)
            writer.close()

        listener = await asyncio.start_server(chatty, "127.0.0.1", 0)
        pool = _pool(listener.sockets[0].getsockname()[1], "/ok")
        reply = await _send(pool)
        await asyncio.sleep(0.1)
        in_flight, idle = pool.in_flight, len(pool._idle)
        await pool.close()
        listener.close()
        return reply, in_flight, idle

    reply, in_flight, idle = asyncio.run(scenario())
    assert reply[:2] == ("reply", 200) and in_flight == 0 and idle == 0
