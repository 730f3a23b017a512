"""A data-only channel to an untrusted program: the program runs in the sandbox as a server, the tests run here.

The sandboxed server (SERVER below) executes the solution, then answers two requests, one line each:
- ("get", name): the value of a global of the solution;
- ("call", handle, args, kwargs): call an object it handed out before.
Requests are `repr` of plain values (ints, floats, strings, bytes, None, lists, tuples, dicts, sets) and are
decoded there by `ast.literal_eval`. Each answer is one line: `ok <literal>`, `ref <n>` (a value that is not
plain, such as a function or a class instance, kept on the server under handle n) or `raise <literal>` (the
exception's builtin type name and message). Here an answer is decoded by `ast.literal_eval` only, and a
handle becomes a `RemoteObject` that can be called or passed back but cannot be compared, hashed or tested for
truth. So all the program can put into the trusted process is plain builtin values: no object with its own
`__eq__`, no `int` subclass, no token, no exit code. Anything else (a malformed or over-long line, an exit, a
timeout) breaks the session, and a broken session fails the verdict whatever the test code does next.
"""
from __future__ import annotations

import ast
import builtins
import inspect
import os
import select
import time

MAX_LINE_CHARS = 4 << 20
REF = "\x00ref"  # marks a handle inside request arguments: (REF, n)
BUILTIN = "\x00builtin"  # marks a builtin type passed as an argument (MBPP 533 passes `int`): (BUILTIN, name)


def encode(value, depth=0):
    """Literal text (for ast.literal_eval) of a value's plain builtin content, else TypeError. Instances of
    subclasses are read through their builtin base (a Counter sends its dict, a namedtuple its tuple, an int
    subclass its int), so they arrive as plain values. Also runs on the server, as a convenience only."""
    if depth > 100:
        raise ValueError("value nested over 100 deep")
    if value is None:
        return "None"
    for base in (bool, int, str, bytes, complex):
        if isinstance(value, base):
            return base.__repr__(value)
    if isinstance(value, float):
        number = float.__float__(value)
        if number != number:
            raise ValueError("nan has no literal")
        return float.__repr__(number) if abs(number) != float("inf") else ("1e999" if number > 0 else "-1e999")
    if isinstance(value, dict):
        return "{" + ", ".join(f"{encode(k, depth + 1)}: {encode(v, depth + 1)}" for k, v in dict.items(value)) + "}"
    for base in (list, tuple, set, frozenset):
        if isinstance(value, base):
            items = [encode(v, depth + 1) for v in base.__iter__(value)]
            if base in (set, frozenset):
                return "{" + ", ".join(items) + "}" if items else "set()"
            text = ", ".join(items) + ("," if base is tuple and len(items) == 1 else "")
            return f"[{text}]" if base is list else f"({text})"
    raise TypeError(f"a {type(value).__name__} is not a plain value")


# The server, run in the sandbox as `python -c SERVER rfd wfd`. Everything in it is
# untrusted once the solution runs (the solution can rewrite it); nothing here relies on it behaving.
SERVER = inspect.getsource(encode) + r'''
import ast, os, sys
rfd, wfd = int(sys.argv[1]), int(sys.argv[2])
requests, answers = os.fdopen(rfd, "r", encoding="utf-8"), os.fdopen(wfd, "w", encoding="utf-8")
source, setup = ast.literal_eval(requests.readline())
sys.argv, sys.stdin = ["program.py"], open(os.devnull)
ns, handles = {"__name__": "__main__"}, []
def answer(line):
    answers.write(line + "\n")
    answers.flush()
def reply(value):
    try:
        answer("ok " + encode(value))
    except (TypeError, ValueError):
        handles.append(value)
        answer(f"ref {len(handles) - 1}")
def resolve(value):
    if type(value) is tuple and len(value) == 2 and value[0] in (REF, BUILTIN):
        return handles[value[1]] if value[0] == REF else getattr(__builtins__, value[1])
    if type(value) in (list, tuple):
        return type(value)(resolve(v) for v in value)
    return value
try:
    exec(compile(source, "program.py", "exec"), ns)
    exec(compile(setup, "setup.py", "exec"), ns)
except BaseException as e:
    answer("raise " + repr((type(e).__name__, str(e)[:300])))
    sys.exit(1)
answer("ok 'ready'")
for line in requests:
    try:
        request = ast.literal_eval(line)
        if request[0] == "get":
            value = ns[request[1]]
        else:
            value = handles[request[1]](*resolve(request[2]), **request[3])
    except BaseException as e:
        answer("raise " + repr((type(e).__name__, str(e)[:300])))
        continue
    reply(value)
'''.replace("REF", repr(REF)).replace("BUILTIN", repr(BUILTIN))


class Broken(BaseException):
    """The session can no longer be trusted to answer (a BaseException so test code rarely swallows it)."""


class RemoteError(Exception):
    """The program raised an exception that is not a builtin Exception type."""


class RemoteObject:
    """A handle to a non-plain value on the server: callable, passable back, never comparable or truthy."""

    def __init__(self, session: "Session", handle: int):
        self._session, self._handle = session, handle

    def __call__(self, *args, **kwargs):
        return self._session.request(("call", self._handle, self._session.wire(args), self._session.wire(kwargs)))

    def _refuse(self, *_):
        raise TypeError("a value the program did not return as plain data cannot be compared or tested")

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __bool__ = _refuse
    __hash__ = None

    def __repr__(self) -> str:
        return f"<remote object {self._handle}>"


def _exception(name: str, message: str) -> Exception:
    cls = getattr(builtins, name, None) if isinstance(name, str) else None
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except Exception:  # noqa: BLE001 - e.g. UnicodeDecodeError needs five arguments
            pass
    return RemoteError(f"{name}: {message}")


class Session:
    """The trusted end of the channel: `proc` is the sandboxed server, `to_server`/`from_server` its pipe fds."""

    def __init__(self, proc, to_server: int, from_server: int, deadline: float):
        self.proc, self._out, self._in, self.deadline = proc, to_server, from_server, deadline
        self._buffer = b""
        self.failure: str | None = None
        self.calls = 0

    def fail(self, why: str) -> Broken:
        self.failure = self.failure or why
        return Broken(self.failure)

    def wire(self, value):
        """Request arguments as plain values, handles replaced by (REF, n)."""
        if isinstance(value, RemoteObject):
            if value._session is not self:
                raise self.fail("a handle from another session")
            return (REF, value._handle)
        if isinstance(value, type) and getattr(builtins, value.__name__, None) is value:
            return (BUILTIN, value.__name__)
        if type(value) in (list, tuple):
            return type(value)(self.wire(v) for v in value)
        if type(value) is dict:
            return {k: self.wire(v) for k, v in value.items()}
        return value

    def _wait(self, fd: int, for_write: bool) -> None:
        left = self.deadline - time.monotonic()
        ready = select.select([], [fd], [], max(left, 0))[1] if for_write else select.select([fd], [], [], max(left, 0))[0]
        if not ready:
            raise self.fail("timed out (wall-clock backstop)")

    def send(self, text: str) -> None:
        data = (text + "\n").encode()
        while data:
            self._wait(self._out, True)
            try:
                data = data[os.write(self._out, data[:65536]):]
            except OSError as e:
                raise self.fail(f"the program stopped reading ({e.strerror})") from None

    def _line(self) -> str:
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_LINE_CHARS:
                raise self.fail(f"an answer over {MAX_LINE_CHARS:,} bytes")
            self._wait(self._in, False)
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise self.fail("the program exited")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode("utf-8", errors="replace")

    def answer(self):
        """The decoded answer: a plain value, a RemoteObject, or the program's exception raised here."""
        if self.failure:
            raise Broken(self.failure)
        kind, _, text = self._line().partition(" ")
        try:
            value = ast.literal_eval(text) if kind in ("ok", "raise") else int(text) if kind == "ref" else None
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            value = kind = None
        if kind == "ok":
            return value
        if kind == "ref" and type(value) is int:
            return RemoteObject(self, value)
        if kind == "raise" and type(value) is tuple and len(value) == 2 and all(type(v) is str for v in value):
            raise _exception(*value)
        raise self.fail("a malformed answer")

    def request(self, request: tuple):
        self.calls += 1
        try:
            self.send(encode(request))
        except (TypeError, ValueError) as e:
            raise self.fail(f"the tests passed a value that is not plain data: {e}") from None
        return self.answer()
