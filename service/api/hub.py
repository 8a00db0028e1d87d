"""The WebSocket hub: decoded frames, statuses and events fanned out to browsers.

A publisher (a session's reader thread, or the event loop) encodes a message ONCE
and hands the text to the loop, which files it in the queues of every client
subscribed to the session. Each client has one writer task draining its own small
queues, so nothing one browser does (reading slowly, not at all, sending garbage)
reaches the publisher or the other browsers.

The queues of a :class:`Client` (all bounded; every drop is counted):

- control: hello, pong, error and the session description sent on subscribe;
  replies to the client, always sent first;
- frames: the newest ``queue_size`` frames; an older one waiting is dropped;
- slots: one per (session, type, stream) for "status" and "signal": replaced;
- events: "session", "event" and broadcast messages, first in first out; on
  overflow the oldest goes, counted and logged, never silently;
- images: per session the newest generated image, a binary message
  (:func:`glimpse.service.sessions.generation.encode_generated`); replaced, counted.

The writer sends control first, then takes slots, events, frames and images in turn. A
send that does not finish in ``slow_after_s`` (the client stopped reading and the
TCP buffers are full) closes the client (1008), counted in ``n_slow_disconnects``.

Messages from the client (JSON text, at most ``max_message_bytes``)::

    {"type": "subscribe", "sessions": [id, ...]}
    {"type": "unsubscribe", "sessions": [id, ...]}
    {"type": "ping", "id": int, "t1": browser ms}  -> {"type": "pong", "id", "t1", "t2", "t3"}

t2 (at receive) and t3 (at send) are ``pylsl.local_clock()`` seconds. Anything
else gets an "error" message; over the size limit closes with 1009, more than
``max_bad_messages`` bad ones with 1008. Frames leave with "t_sent", the LSL
clock when the hub was handed them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pylsl
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..errors import InputError, NotFound, TooLarge
from .wsjson import decode_message, short

__all__ = ["PROTOCOL_VERSION", "Client", "Hub", "Pong", "encode", "kind_of"]

logger = logging.getLogger("glimpse.service.api.hub")

PROTOCOL_VERSION = 1
CONTROL, FRAME, SLOT, EVENT, IMAGE = "control", "frame", "slot", "event", "image"
_KINDS = {"frame": FRAME, "status": SLOT, "signal": SLOT,
          "hello": CONTROL, "pong": CONTROL, "error": CONTROL}
_CLIENT_TYPES = ("subscribe", "unsubscribe", "ping")
CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_TOO_BIG = 1001, 1008, 1009


def kind_of(message_type: str) -> str:
    """The queue a server message of this type goes to (everything unknown: events)."""
    return _KINDS.get(message_type, EVENT)


def encode(message: dict) -> str:
    """One JSON text message; NaN or infinity raise ValueError (JSON has neither)."""
    return json.dumps(message, allow_nan=False, separators=(",", ":"), ensure_ascii=False)


def error_message(error: InputError) -> str:
    """The "error" message answering a bad client message."""
    return encode({"type": "error", "expected": error.expected, "got": error.got,
                   "fix": error.fix, "message": str(error)})


@dataclass(frozen=True)
class Pong:
    """A pong waiting in a client's queue; t3 is stamped when it is sent."""

    id: int
    t1: float
    t2: float

    def text(self) -> str:
        return encode({"type": "pong", "id": self.id, "t1": self.t1, "t2": self.t2,
                       "t3": pylsl.local_clock()})


class Client:
    """One connection's subscriptions and bounded queues; no I/O, tested on strings.

    Parameters
    ----------
    queue_size : int
        Frames kept while the client is busy; the newest wins.
    events_size, control_size : int
        Bounds of the event FIFO and of the control queue.
    """

    def __init__(self, queue_size: int = 4, *, events_size: int = 64, control_size: int = 64):
        if queue_size < 1:
            raise InputError("queue_size >= 1", repr(queue_size), "keep at least one frame per client")
        self.sessions: set[str] = set()
        self.frames: deque[str] = deque(maxlen=queue_size)
        self.slots: dict[Any, str] = {}
        self.events: deque[str] = deque(maxlen=events_size)
        self.control: deque[str | Pong] = deque(maxlen=control_size)
        self.images: dict[Any, bytes] = {}
        self.n_sent = self.n_dropped = self.n_replaced = self.n_images_replaced = 0
        self.n_events_dropped = self.n_control_dropped = self.n_bad_messages = 0
        self.close_code: int | None = None
        self.close_reason = ""
        self.wakeup = asyncio.Event()
        self._turn = 0

    def push(self, kind: str, item: str | bytes | Pong, key: Any = None) -> Client:
        """File one message (``key`` names a slot, or an image's session) and wake the writer."""
        if kind == IMAGE:
            self.n_images_replaced += key in self.images
            self.images[key] = item
        elif kind == FRAME:
            if len(self.frames) == self.frames.maxlen:
                self.n_dropped += 1
            self.frames.append(item)
        elif kind == SLOT:
            if key in self.slots:
                self.n_replaced += 1
            self.slots[key] = item
        elif kind == EVENT:
            if len(self.events) == self.events.maxlen:
                self.n_events_dropped += 1
                logger.warning("a client's event queue is full (%d): its oldest event is dropped",
                               self.events.maxlen)
            self.events.append(item)
        elif kind == CONTROL:
            if len(self.control) == self.control.maxlen:
                self.n_control_dropped += 1
            self.control.append(item)
        else:
            raise InputError(f"one of {CONTROL}, {FRAME}, {SLOT}, {EVENT}, {IMAGE}", repr(kind),
                             "use kind_of(type)")
        self.wakeup.set()
        return self

    def pop(self) -> str | bytes | Pong | None:
        """The next message to send: control first, then slots, events, frames and images in turn."""
        if self.control:
            return self.control.popleft()
        for i in range(4):
            turn = (self._turn + i) % 4
            item = self._take(turn)
            if item is not None:
                self._turn = (turn + 1) % 4
                return item
        return None

    def _take(self, turn: int) -> str | bytes | None:
        if turn == 3 and self.images:
            return self.images.pop(next(iter(self.images)))
        if turn == 0 and self.slots:
            key = next(iter(self.slots))
            return self.slots.pop(key)
        if turn == 1 and self.events:
            return self.events.popleft()
        if turn == 2 and self.frames:
            return self.frames.popleft()
        return None

    def request_close(self, code: int, reason: str) -> Client:
        """Ask the writer to close with ``code`` before sending anything else (first request wins)."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self.wakeup.set()
        return self

    def pending(self) -> int:
        """Messages waiting to be sent."""
        return len(self.control) + len(self.frames) + len(self.slots) + len(self.events) + len(self.images)


class Hub:
    """Fan-out of session messages to WebSocket clients (see the module docstring).

    Parameters
    ----------
    queue_size : int
        Frames kept per client; the newest wins.
    slow_after_s : float
        A send that takes longer closes the client as not reading.
    max_message_bytes : int
        Largest client message; a larger one closes the client with 1009.
    known_sessions : callable
        The ids a client may subscribe to.
    describe : callable or None
        ``describe(id)`` -> the session description sent on subscribe.
    max_bad_messages : int
        Bad client messages tolerated before closing with 1008.
    """

    def __init__(self, *, queue_size: int = 4, slow_after_s: float = 5.0,
                 max_message_bytes: int = 65_536, known_sessions: Callable[[], Iterable[str]],
                 describe: Callable[[str], dict] | None = None, max_bad_messages: int = 20):
        for name, value in (("queue_size", queue_size), ("slow_after_s", slow_after_s),
                            ("max_message_bytes", max_message_bytes),
                            ("max_bad_messages", max_bad_messages)):
            if not value > 0:
                raise InputError(f"{name} > 0", repr(value), f"set a positive {name}")
        self.queue_size, self.slow_after_s = queue_size, slow_after_s
        self.max_message_bytes, self.max_bad_messages = max_message_bytes, max_bad_messages
        self.known_sessions, self.describe = known_sessions, describe
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clients: set[Client] = set()
        self._subscribers: dict[str, set[Client]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._closing = False
        self._lock = threading.Lock()  # guards n_encode_errors (publishers' threads)
        self.n_connected_total = self.n_disconnected_total = self.n_slow_disconnects = 0
        self.n_bad_messages = self.n_published = self.n_encode_errors = 0
        self._dropped_gone = self._images_gone = 0

    # publishing: any thread ---------------------------------------------------------

    def bind(self, loop: asyncio.AbstractEventLoop) -> Hub:
        """Deliver on ``loop`` (the app's, from its lifespan)."""
        self._loop, self._closing = loop, False
        return self

    def publish(self, session_id: str, message: dict | bytes) -> None:
        """Send ``message`` to the clients of ``session_id``; any thread, never blocks.

        A frame gets "t_sent"; a message without "type" or that JSON cannot carry
        (NaN, an object) is logged, counted in ``n_encode_errors`` and dropped.
        Bytes go to :meth:`publish_bytes`.
        """
        if isinstance(message, (bytes, bytearray)):
            self.publish_bytes(session_id, bytes(message))
            return
        if message.get("type") == "frame":
            message = {**message, "t_sent": pylsl.local_clock()}
        self._hand_over(session_id, message)

    def publish_bytes(self, session_id: str, data: bytes) -> None:
        """A binary message (a generated image) to ``session_id``'s clients; as :meth:`publish`."""
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._file, session_id, IMAGE, session_id, data)
            except RuntimeError:
                logger.debug("the hub's loop is closed: a generated image is dropped")

    def broadcast(self, message: dict) -> None:
        """Send ``message`` to every client (e.g. the session list changed); any thread."""
        self._hand_over(None, message)

    def _hand_over(self, session_id: str | None, message: dict) -> None:
        loop = self._loop
        if loop is None:
            return  # not bound: no client can be connected
        try:
            if not isinstance(message.get("type"), str):
                raise TypeError(f'no "type" in {short(message)}')
            text = encode(message)
        except (TypeError, ValueError) as error:  # the publisher's bug: its thread goes on
            with self._lock:
                self.n_encode_errors += 1
            logger.error("a %r message for session %s cannot be sent (%s): dropped",
                         message.get("type"), session_id, error)
            return
        kind = kind_of(message.get("type"))
        key = (session_id, message.get("type"), message.get("stream")) if kind == SLOT else None
        try:
            loop.call_soon_threadsafe(self._file, session_id, kind, key, text)
        except RuntimeError:
            logger.debug("the hub's loop is closed: a %r message is dropped", message.get("type"))

    def _file(self, session_id: str | None, kind: str, key: Any, text: str | bytes) -> None:
        self.n_published += 1
        clients = self._clients if session_id is None else self._subscribers.get(session_id, ())
        for client in clients:
            client.push(kind, text, key)

    # bookkeeping: any thread --------------------------------------------------------

    def clients_of(self, session_id: str) -> int:
        """Number of clients subscribed to ``session_id``."""
        return len(self._subscribers.get(session_id, ()))

    def stats(self) -> dict:
        """Counters for /metrics and the tests."""
        clients = tuple(self._clients)
        return {"clients": len(clients), "n_connected_total": self.n_connected_total,
                "n_disconnected_total": self.n_disconnected_total,
                "n_slow_disconnects": self.n_slow_disconnects, "n_bad_messages": self.n_bad_messages,
                "n_dropped": self._dropped_gone + sum(c.n_dropped for c in clients),
                "n_images_replaced": self._images_gone + sum(c.n_images_replaced for c in clients),
                "n_published": self.n_published, "n_encode_errors": self.n_encode_errors,
                "tasks": len(self._tasks)}

    # connections: the loop ----------------------------------------------------------

    async def serve(self, websocket: WebSocket, sessions: Iterable[str] = ()) -> None:
        """Run one accepted connection until it closes, subscribed to ``sessions``."""
        client = Client(self.queue_size)
        self._clients.add(client)
        self.n_connected_total += 1
        client.push(CONTROL, encode({"type": "hello", "v": PROTOCOL_VERSION,
                                     "sessions": list(self.known_sessions())}))
        self._subscribe(client, list(sessions))
        if self._closing:
            client.request_close(CLOSE_GOING_AWAY, "the service is shutting down")
        reader = self._spawn(self._read(client, websocket))
        writer = self._spawn(self._write(client, websocket))
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            if writer not in done and client.close_code is not None:
                await asyncio.wait({writer}, timeout=self.slow_after_s + 1.0)
        finally:
            reader.cancel()
            writer.cancel()
            self._forget(client)  # before awaiting: this task may itself be cancelled here
            for result in await asyncio.gather(reader, writer, return_exceptions=True):
                if isinstance(result, Exception):
                    logger.error("a WebSocket client's task failed", exc_info=result)

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _forget(self, client: Client) -> None:
        self._clients.discard(client)
        for session_id in client.sessions:
            subscribers = self._subscribers.get(session_id)
            if subscribers is not None:
                subscribers.discard(client)
                if not subscribers:
                    del self._subscribers[session_id]
        self.n_disconnected_total += 1
        self._dropped_gone += client.n_dropped
        self._images_gone += client.n_images_replaced

    async def close(self, timeout_s: float = 5.0) -> None:
        """Close every client with 1001 and wait for their tasks; cancel what is left."""
        self._closing = True
        for client in tuple(self._clients):
            client.request_close(CLOSE_GOING_AWAY, "the service is shutting down")
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        logger.info("hub closed: %d clients served, %d slow", self.n_connected_total,
                    self.n_slow_disconnects)

    async def _write(self, client: Client, websocket: WebSocket) -> None:
        while True:
            if client.close_code is not None:
                await self._close_socket(websocket, client.close_code, client.close_reason)
                return
            item = client.pop()
            if item is None:
                client.wakeup.clear()
                await client.wakeup.wait()
                continue
            send = (websocket.send_bytes(item) if isinstance(item, bytes)
                    else websocket.send_text(item if isinstance(item, str) else item.text()))
            try:
                await asyncio.wait_for(send, self.slow_after_s)
            except TimeoutError:
                self.n_slow_disconnects += 1
                logger.warning("a WebSocket client did not read for %.1f s (%d frames dropped): closed",
                               self.slow_after_s, client.n_dropped)
                await self._close_socket(websocket, CLOSE_POLICY, "not reading")
                return
            except (WebSocketDisconnect, RuntimeError, OSError):
                return
            client.n_sent += 1

    async def _close_socket(self, websocket: WebSocket, code: int, reason: str) -> None:
        # A client that does not read cannot take a close frame either: do not wait for it.
        try:
            await asyncio.wait_for(websocket.close(code, reason), min(self.slow_after_s, 1.0))
        except (TimeoutError, WebSocketDisconnect, RuntimeError, OSError):
            logger.debug("a WebSocket client's close (%d) did not go out", code)

    async def _read(self, client: Client, websocket: WebSocket) -> None:
        while client.close_code is None:
            message = await websocket.receive()
            t2 = pylsl.local_clock()
            if message["type"] == "websocket.disconnect":
                return
            try:
                self._handle(client, message, t2)
            except TooLarge as error:
                self.n_bad_messages += 1
                client.n_bad_messages += 1
                logger.info("a WebSocket client sent %s: closed (1009)", error.got)
                client.request_close(CLOSE_TOO_BIG, f"message over {self.max_message_bytes} bytes")
            except InputError as error:
                self.n_bad_messages += 1
                client.n_bad_messages += 1
                client.push(CONTROL, error_message(error))
                if client.n_bad_messages > self.max_bad_messages:
                    logger.info("a WebSocket client sent %d bad messages: closed (1008)",
                                client.n_bad_messages)
                    client.request_close(CLOSE_POLICY, f"more than {self.max_bad_messages} bad messages")

    def _handle(self, client: Client, message: dict, t2: float) -> None:
        request = parse_client_message(message, self.max_message_bytes)
        kind = request["type"]
        if kind == "ping":
            client.push(CONTROL, Pong(request["id"], request["t1"], t2))
        elif kind == "subscribe":
            self._subscribe(client, request["sessions"])
        else:
            for session_id in request["sessions"]:
                self._unsubscribe(client, session_id)

    def _subscribe(self, client: Client, session_ids: list[str]) -> None:
        known = list(self.known_sessions())
        unknown = [s for s in session_ids if s not in known]
        if unknown:
            client.push(CONTROL, error_message(NotFound(
                "ids of running sessions", f"{unknown}; valid ids: {known}",
                "subscribe to one of the valid ids (GET /api/sessions lists them)")))
        for session_id in session_ids:
            if session_id in unknown or session_id in client.sessions:
                continue
            if self.describe is not None:
                try:
                    description = self.describe(session_id)
                except InputError as error:  # the session went away meanwhile
                    client.push(CONTROL, error_message(error))
                    continue
                client.push(CONTROL, encode({"type": "session", "session": description}))
            client.sessions.add(session_id)
            self._subscribers.setdefault(session_id, set()).add(client)

    def _unsubscribe(self, client: Client, session_id: str) -> None:
        client.sessions.discard(session_id)
        subscribers = self._subscribers.get(session_id)
        if subscribers is not None:
            subscribers.discard(client)
            if not subscribers:
                del self._subscribers[session_id]


def parse_client_message(message: dict, max_bytes: int) -> dict:
    """One ASGI receive event -> a checked client request; InputError (TooLarge) otherwise."""
    request = decode_message(message, max_bytes, _CLIENT_TYPES,
                             too_large_fix="send subscribe, unsubscribe or ping messages only",
                             example='{"type": "subscribe", "sessions": ["<id>"]}')
    if request["type"] == "ping":
        return _check_ping(request)
    sessions = request.get("sessions")
    if not isinstance(sessions, list) or not all(isinstance(s, str) for s in sessions):
        raise InputError(f'"sessions": a list of session ids in a {request["type"]} message',
                         short(sessions), f'e.g. {{"type": "{request["type"]}", "sessions": ["<id>"]}}')
    return {"type": request["type"], "sessions": sessions}


def _check_ping(request: dict) -> dict:
    ping_id, t1 = request.get("id"), request.get("t1")
    if not isinstance(ping_id, int) or isinstance(ping_id, bool):
        raise InputError('"id": an integer in a ping', short(ping_id), "number the pings 0, 1, 2, ...")
    number = isinstance(t1, (int, float)) and not isinstance(t1, bool)
    if not (number and abs(t1) < 1e300 and math.isfinite(t1)):  # a huge int overflows float
        raise InputError('"t1": the browser clock in ms (a finite number) in a ping', short(t1),
                         "send performance.timeOrigin + performance.now()")
    return {"type": "ping", "id": ping_id, "t1": float(t1)}
