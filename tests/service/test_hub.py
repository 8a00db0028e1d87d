"""glimpse.service.api.hub and ws: the queues of one client on plain strings, the
client messages' checks, the writer's order on a stand-in websocket, and the hub
behind a real uvicorn server on loopback, fed by a publisher thread at 20 Hz:
subscriptions, pongs, bad input, the token refusal and a clean close. A client
that never reads, and load: test_hub_load.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from contextlib import ExitStack, asynccontextmanager

import pylsl
import pytest
import uvicorn
import websockets
from fastapi import FastAPI
from websockets.sync.client import connect

from glimpse.service.api import hub as hub_module
from glimpse.service.api import ws as ws_module
from glimpse.service.api.hub import CONTROL, EVENT, FRAME, SLOT, Client, Hub, parse_client_message
from glimpse.service.errors import InputError, TooLarge
from glimpse.service.settings import Settings

# A real server in a thread, clients with their own threads: a hang must fail, not stall CI.
pytestmark = pytest.mark.timeout(60)

SESSIONS = ("s1", "s2")
UVICORN_WS = "websockets-sansio"  # uvicorn's websockets stack; "websockets" (legacy) is deprecated


def describe(session_id: str) -> dict:
    return {"id": session_id, "state": "running"}


class Server:
    """The hub and the ws router in a minimal FastAPI app, served by uvicorn in a thread."""

    def __init__(self, hub: Hub, token: str | None = None):
        self.hub, self.loop = hub, None

        @asynccontextmanager
        async def lifespan(app):
            self.loop = asyncio.get_running_loop()
            hub.bind(self.loop)
            yield
            await hub.close(timeout_s=2.0)

        app = FastAPI(lifespan=lifespan)
        app.state.hub, app.state.settings = hub, Settings(token=token)
        app.include_router(ws_module.router)
        config = uvicorn.Config(app, host="127.0.0.1", port=0, ws=UVICORN_WS, lifespan="on",
                                log_level="warning", timeout_graceful_shutdown=3)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start in 10 s"
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        assert not self.thread.is_alive(), "uvicorn did not stop in 15 s"

    def url(self, path: str = "/ws") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def run(self, coroutine, timeout: float = 10.0):
        """Run ``coroutine`` on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def n_loop_tasks(self) -> int:
        async def count() -> int:
            return len(asyncio.all_tasks())
        return self.run(count())


class Publisher(threading.Thread):
    """A session's reader thread: frames for ``session`` at ``rate`` Hz, each publish timed."""

    def __init__(self, hub: Hub, session: str = "s1", rate: float = 20.0, pad: int = 0):
        super().__init__(name=f"publisher-{session}", daemon=True)
        self.hub, self.session, self.rate, self.pad = hub, session, rate, pad
        self.published: list[tuple[int, float]] = []  # (seq, monotonic time)
        self.durations: list[float] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        seq, next_t = 0, time.monotonic()
        while not self.stopping.is_set():
            frame = {"type": "frame", "v": 1, "session": self.session, "seq": seq, "pad": "x" * self.pad}
            t0 = time.perf_counter()
            self.hub.publish(self.session, frame)
            self.durations.append(time.perf_counter() - t0)
            self.published.append((seq, time.monotonic()))
            seq += 1
            next_t += 1.0 / self.rate
            self.stopping.wait(max(0.0, next_t - time.monotonic()))

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)


@pytest.fixture
def served():
    """A hub (slow after 1 s) behind uvicorn, and a publisher of "s1" frames at 20 Hz."""
    hub = Hub(queue_size=4, slow_after_s=1.0, max_message_bytes=4096,
              known_sessions=lambda: list(SESSIONS), describe=describe)
    with Server(hub) as server:
        publisher = Publisher(hub)
        publisher.start()
        try:
            yield server, publisher
        finally:
            publisher.stop()


def receive(ws, kind: str, timeout: float = 5.0) -> tuple[dict, list[dict]]:
    """The first message of type ``kind``, and those before it."""
    before, deadline = [], time.monotonic() + timeout
    while True:
        message = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        if message["type"] == kind:
            return message, before
        before.append(message)


def close_code(ws) -> int:
    """Read until the server closes; the code it closed with."""
    with pytest.raises(websockets.ConnectionClosed) as info:
        while True:
            ws.recv(timeout=5)
    return info.value.rcvd.code


def wait_for(condition, timeout: float = 5.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not hold within {timeout} s"
        time.sleep(0.02)


# a client's queues, no I/O ----------------------------------------------------------

def test_frames_newest_wins_and_drops_are_counted():
    client = Client(queue_size=4)
    for i in range(10):
        client.push(FRAME, f"f{i}")
    assert [client.pop() for _ in range(5)] == ["f6", "f7", "f8", "f9", None]
    assert client.n_dropped == 6


def test_slots_are_replaced_per_key_and_control_goes_first():
    client = Client(queue_size=2)
    client.push(SLOT, "status-1", ("s1", "status", None))
    client.push(SLOT, "signal-a1", ("s1", "signal", "a"))
    client.push(SLOT, "status-2", ("s1", "status", None))
    client.push(FRAME, "frame")
    client.push(CONTROL, "pong")
    assert client.pop() == "pong"
    assert client.n_replaced == 1
    assert {client.pop() for _ in range(3)} == {"status-2", "signal-a1", "frame"}
    assert client.pop() is None and client.pending() == 0


def test_slots_events_and_frames_take_turns():
    client = Client(queue_size=8)
    for i in range(3):
        client.push(FRAME, f"f{i}")
        client.push(EVENT, f"e{i}")
        client.push(SLOT, f"s{i}", ("s1", "signal", str(i)))
    kinds = [client.pop()[0] for _ in range(9)]
    assert kinds == ["s", "e", "f"] * 3  # no kind waits behind a run of another


def test_events_are_first_in_first_out_and_overflow_is_counted(caplog):
    client = Client(events_size=3)
    for i in range(5):
        client.push(EVENT, f"e{i}")
    assert [client.pop() for _ in range(3)] == ["e2", "e3", "e4"]
    assert client.n_events_dropped == 2
    assert "event queue is full" in caplog.text


def test_a_zero_queue_an_unknown_kind_and_a_zero_timeout_are_refused():
    with pytest.raises(InputError, match="queue_size >= 1"):
        Client(queue_size=0)
    with pytest.raises(InputError, match="kind_of"):
        Client().push("video", "x")
    with pytest.raises(InputError, match="slow_after_s > 0"):
        Hub(slow_after_s=0, known_sessions=list)


# the hub on a stand-in websocket whose sends the test holds back --------------------

class HeldWebSocket:
    """The two calls the hub makes on each side of a connection; ``gate`` holds sends."""

    def __init__(self):
        self.incoming: asyncio.Queue = asyncio.Queue()
        self.sent: list[dict] = []
        self.gate, self.closed_with = asyncio.Event(), None
        self.gate.set()

    async def receive(self) -> dict:
        return await self.incoming.get()

    async def send_text(self, data: str) -> None:
        await self.gate.wait()
        self.sent.append(json.loads(data))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.gate.wait()
        self.closed_with = code


async def until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the hub did not get there in time"
        await asyncio.sleep(0.005)


def test_a_pong_goes_ahead_of_queued_frames_and_old_frames_are_dropped():
    async def scenario() -> tuple[list[dict], dict]:
        hub = Hub(queue_size=4, known_sessions=lambda: ["s1"]).bind(asyncio.get_running_loop())
        ws = HeldWebSocket()
        served = asyncio.create_task(hub.serve(ws, ["s1"]))
        await until(lambda: ws.sent)  # hello
        ws.gate.clear()  # the client stops reading: frame 0 waits in send, 1..9 queue up
        hub.publish("s1", {"type": "frame", "seq": 0})
        await asyncio.sleep(0.05)  # the writer takes frame 0 and waits in send
        for seq in range(1, 10):
            hub.publish("s1", {"type": "frame", "seq": seq})
        await until(lambda: hub.stats()["n_dropped"] == 5)
        ws.incoming.put_nowait(text({"type": "ping", "id": 1, "t1": 0.0}))
        await asyncio.sleep(0.05)
        ws.gate.set()
        await until(lambda: len(ws.sent) == 7)
        ws.incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})
        await served
        return ws.sent, hub.stats()

    sent, stats = asyncio.run(scenario())
    assert [(m["type"], m.get("seq")) for m in sent[1:]] == \
        [("frame", 0), ("pong", None), ("frame", 6), ("frame", 7), ("frame", 8), ("frame", 9)]
    assert stats["n_dropped"] == 5 and stats["tasks"] == 0 and stats["n_disconnected_total"] == 1


def test_a_send_that_hangs_closes_the_client_as_slow():
    async def scenario() -> tuple[HeldWebSocket, dict]:
        hub = Hub(slow_after_s=0.2, known_sessions=list).bind(asyncio.get_running_loop())
        ws = HeldWebSocket()
        ws.gate.clear()  # not even the hello goes out
        await asyncio.wait_for(hub.serve(ws), 5)  # returns on its own: the hub closed the client
        return ws, hub.stats()

    ws, stats = asyncio.run(scenario())
    assert stats["n_slow_disconnects"] == 1 and stats["clients"] == 0 and stats["tasks"] == 0
    assert ws.sent == [] and ws.closed_with is None  # a close that cannot go out is given up


# client messages, no I/O ------------------------------------------------------------

def text(payload) -> dict:
    """The ASGI event of a text message carrying ``payload`` (JSON-encoded unless a str)."""
    encoded = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return {"type": "websocket.receive", "text": encoded}


@pytest.mark.parametrize(("message", "match"), [
    (text("not json"), "not JSON"),
    (text('{"type": "ping", "id": 1, "t1": NaN}'), "not JSON"),
    (text("[" * 3000 + "]" * 3000), "not JSON"),  # nesting deeper than the parser's recursion
    (text([1, 2]), "a JSON list"),
    (text("42"), "a JSON int"),
    (text({"type": "dance"}), "type 'dance'"),
    (text({"sessions": ["s1"]}), "type None"),
    (text({"type": "subscribe", "sessions": "s1"}), '"sessions": a list'),
    (text({"type": "unsubscribe", "sessions": [1]}), '"sessions": a list'),
    (text({"type": "ping", "id": "1", "t1": 1.0}), '"id": an integer'),
    (text({"type": "ping", "id": True, "t1": 1.0}), '"id": an integer'),
    (text({"type": "ping", "id": 1, "t1": "12"}), '"t1"'),
    (text({"type": "ping", "id": 1, "t1": 10 ** 400}), '"t1"'),
    ({"type": "websocket.receive", "bytes": b"\x00\x01"}, "binary message"),
])
def test_bad_client_messages_are_refused_naming_what_came(message, match):
    with pytest.raises(InputError, match=match) as info:
        parse_client_message(message, max_bytes=1 << 20)
    assert not isinstance(info.value, TooLarge)


def test_a_message_over_the_limit_is_too_large_counted_in_utf8_bytes():
    assert parse_client_message(text({"type": "subscribe", "sessions": ["é" * 25]}), 100)  # 89 bytes
    message = text({"type": "subscribe", "sessions": ["é" * 35]})  # 74 characters, 109 bytes
    with pytest.raises(TooLarge, match="at most 100 bytes; got 109 bytes"):
        parse_client_message(message, 100)


def test_good_client_messages_are_parsed():
    assert parse_client_message(text({"type": "ping", "id": 3, "t1": 5}), 100) == \
        {"type": "ping", "id": 3, "t1": 5.0}
    assert parse_client_message(text({"type": "unsubscribe", "sessions": ["s1"]}), 100) == \
        {"type": "unsubscribe", "sessions": ["s1"]}


def test_publish_before_bind_and_unencodable_messages_do_not_raise(caplog):
    hub = Hub(known_sessions=list)
    hub.publish("s1", {"type": "frame", "seq": 0})  # no loop yet: nobody to tell
    loop = asyncio.new_event_loop()
    hub.bind(loop)
    try:
        hub.publish("s1", {"type": "frame", "confidence": float("nan")})
        hub.publish("s1", {"type": "status", "when": object()})
        hub.publish("s1", {"seq": 1})
    finally:
        loop.close()
    assert hub.stats()["n_encode_errors"] == 3
    assert "Out of range float values" in caplog.text and 'no "type"' in caplog.text


# the hub behind uvicorn -------------------------------------------------------------

def test_subscribe_unsubscribe_and_several_sessions(served):
    server, publisher = served
    hub = server.hub
    with connect(server.url()) as ws:
        hello, _ = receive(ws, "hello")
        assert hello == {"type": "hello", "v": 1, "sessions": ["s1", "s2"]}
        ws.send(json.dumps({"type": "subscribe", "sessions": ["s1", "s2"]}))
        described = [receive(ws, "session")[0]["session"]["id"] for _ in range(2)]
        assert described == ["s1", "s2"]
        frame, _ = receive(ws, "frame")
        assert frame["session"] == "s1" and frame["v"] == 1
        assert 0 <= pylsl.local_clock() - frame["t_sent"] < 5  # stamped by the hub on the LSL clock
        assert hub.clients_of("s1") == hub.clients_of("s2") == 1

        hub.publish("s2", {"type": "event", "session": "s2", "event": "stream_lost", "message": "x", "t": 0})
        event, _ = receive(ws, "event")
        assert event["session"] == "s2"

        ws.send(json.dumps({"type": "unsubscribe", "sessions": ["s1"]}))
        wait_for(lambda: hub.clients_of("s1") == 0, what="the unsubscribe")
        last = publisher.published[-1][0]
        time.sleep(0.5)
        late = []
        with pytest.raises(TimeoutError):
            while True:
                late.append(json.loads(ws.recv(timeout=0.2)))
        assert publisher.published[-1][0] >= last + 5  # s1 frames kept coming, not to this client:
        assert all(m["type"] == "frame" and m["seq"] <= last + 1 for m in late)  # one may be on its way
        assert hub.clients_of("s2") == 1
    wait_for(lambda: hub.stats()["clients"] == 0, what="the disconnect")
    assert hub.clients_of("s2") == 0


def test_the_session_path_subscribes_from_the_start(served):
    server, _ = served
    with connect(server.url("/ws/sessions/s1")) as ws:
        session, before = receive(ws, "session")
        assert session["session"] == describe("s1") and [m["type"] for m in before] == ["hello"]
        assert receive(ws, "frame")[0]["session"] == "s1"


def test_status_and_signal_reach_subscribers_with_newest_winning(served):
    server, _ = served
    hub = server.hub
    with connect(server.url("/ws/sessions/s2")) as ws:
        receive(ws, "session")
        for i in range(50):  # faster than any client reads: most are replaced in their slot
            hub.publish("s2", {"type": "status", "session": "s2", "n_decoded": i})
        last = 0
        while last < 49:
            last = receive(ws, "status")[0]["n_decoded"]
        hub.publish("s2", {"type": "signal", "session": "s2", "stream": "meg", "levels": [1.0]})
        assert receive(ws, "signal")[0]["levels"] == [1.0]


def test_pong_carries_the_service_clock_and_jumps_the_frame_queue(served):
    server, _ = served
    with connect(server.url("/ws/sessions/s1")) as ws:
        receive(ws, "frame")
        before_ping = pylsl.local_clock()
        ws.send(json.dumps({"type": "ping", "id": 7, "t1": 1234.5}))
        pong, before = receive(ws, "pong")
        after_pong = pylsl.local_clock()
        assert set(pong) == {"type", "id", "t1", "t2", "t3"}
        assert pong["id"] == 7 and pong["t1"] == 1234.5
        assert before_ping <= pong["t2"] <= pong["t3"] <= after_pong  # seconds, one clock
        assert all(frame["t_sent"] <= pong["t2"] for frame in before)  # none published later went first


def test_garbage_gets_error_messages_and_the_connection_lives(served):
    server, _ = served
    hub = server.hub
    with connect(server.url()) as ws:
        receive(ws, "hello")
        for garbage, match in [("not json", "not JSON"), ("[1, 2]", "a JSON list"),
                               ('{"type": "dance"}', "type 'dance'"), (b"\x00\xff", "binary")]:
            ws.send(garbage)
            error, _ = receive(ws, "error")
            assert match in error["got"] and error["fix"] and error["expected"]
        ws.send(json.dumps({"type": "ping", "id": 1, "t1": 0.0}))
        assert receive(ws, "pong")[0]["id"] == 1
    assert hub.stats()["n_bad_messages"] == 4


def test_unknown_session_gets_an_error_listing_the_valid_ids(served):
    server, _ = served
    with connect(server.url("/ws/sessions/nope")) as ws:
        error, _ = receive(ws, "error")
        assert "nope" in error["got"] and "['s1', 's2']" in error["got"]
        ws.send(json.dumps({"type": "subscribe", "sessions": ["s1", "gone"]}))
        error, _ = receive(ws, "error")
        assert "gone" in error["got"]
        assert receive(ws, "frame")[0]["session"] == "s1"  # the valid one was subscribed


@pytest.mark.parametrize(("messages", "code"), [
    ([json.dumps({"type": "subscribe", "sessions": ["x" * 5000]})], 1009),  # over max_message_bytes
    (["garbage"] * 21, 1008),  # over max_bad_messages
])
def test_a_huge_message_or_too_many_bad_ones_close_the_connection(served, messages, code):
    server, _ = served
    with connect(server.url()) as ws:
        for message in messages:
            ws.send(message)
        assert close_code(ws) == code
    assert server.hub.stats()["n_bad_messages"] == len(messages)


@pytest.mark.parametrize("path", ["/ws", "/ws?token=wrong", "/ws/sessions/s1?token=t0"])
def test_a_missing_or_wrong_token_is_refused_with_401(path):
    hub = Hub(known_sessions=lambda: list(SESSIONS))
    with Server(hub, token="t0k") as server:
        with pytest.raises(websockets.InvalidStatus) as info:
            with connect(server.url(path)):
                pass
        assert info.value.response.status_code == 401
        body = json.loads(info.value.response.body)
        assert body["error"]["status"] == 401 and "token" in body["error"]["expected"]
        with connect(server.url("/ws/sessions/s1?token=t0k")) as ws:
            assert receive(ws, "hello")[0]["v"] == 1
        with connect(server.url("/ws"), additional_headers={"Cookie": "glimpse_token=t0k"}) as ws:
            assert receive(ws, "hello")[0]["v"] == 1
        assert hub.stats()["n_connected_total"] == 2


def test_each_message_is_encoded_once_whatever_the_number_of_clients(served, monkeypatch):
    server, _ = served
    encoded = []
    real_encode = hub_module.encode
    monkeypatch.setattr(hub_module, "encode", lambda m: encoded.append(m["type"]) or real_encode(m))
    with ExitStack() as stack:
        clients = [stack.enter_context(connect(server.url("/ws/sessions/s2"))) for _ in range(3)]
        for ws in clients:
            receive(ws, "session")
        encoded.clear()
        server.hub.publish("s2", {"type": "event", "session": "s2", "event": "stream_back", "message": "",
                                  "t": 0})
        for ws in clients:
            receive(ws, "event")
        assert encoded.count("event") == 1


def test_close_sends_1001_and_leaves_no_tasks(served):
    server, _ = served
    hub = server.hub
    with ExitStack() as stack:
        clients = [stack.enter_context(connect(server.url("/ws/sessions/s1"))) for _ in range(3)]
        wait_for(lambda: hub.stats()["clients"] == 3, what="3 clients")
        assert hub.stats()["tasks"] == 6  # a reader and a writer each
        server.run(hub.close(timeout_s=3.0))
        assert [close_code(ws) for ws in clients] == [1001] * 3
        wait_for(lambda: hub.stats()["tasks"] == 0 and hub.stats()["clients"] == 0, what="no tasks left")
