"""A data-only channel to an untrusted program: the program runs in the sandbox as a server, the tests run here.

The sandboxed server (SERVER below) executes the solution, then answers two requests, one line each:
- ("get", name): the value of a global of the solution;
- ("call", handle, args, kwargs): call an object it handed out before.
Requests and answers are plain values (ints of any size, floats, complex, strings, bytes, None, lists, tuples,
dicts, sets, frozensets) in JSON: lists and the JSON scalars as themselves, everything else as a one-key object
whose key starts with NUL ({"\0t": [...]} a tuple; an int too long for a JSON number is hex). Each answer is
one line: `ok <value>`, `ref <n>` (a value that is not plain, such as a function or a class instance, kept on
the server under handle n) or `raise <value>` (the exception's builtin type name and message). Here an answer
is decoded by `decode` only (json.loads: no code runs), and a handle becomes a `RemoteObject` that can be
called or passed back but cannot be compared, hashed or tested for truth. So all the program can put into
the trusted process is plain builtin values: no object with its own `__eq__`, no `int` subclass, no token, no
exit code. Anything else (a malformed or over-long line, an exit, a stall) breaks the session, and a broken
session fails the verdict whatever the test code does next.

What an answer may cost this process is bounded and charged to the program (issue 25): a line is at most
MAX_LINE_CHARS; decoding is linear; values that would make a set or dict quadratic (over MAX_SAME_HASH distinct
numbers, tuples or frozensets of one hash, which the program can choose since numbers hash to themselves)
are refused before anything here hashes them; the CPU this process spends reading answers counts against
`answer_cpu_s`. Each of these ends the session as a sandbox limit of the program.
"""
from __future__ import annotations

import builtins
import hashlib
import inspect
import json
import os
import select
import time
from collections import Counter

from posttrain.rewards.progress import report_busy
from posttrain.rewards.sandbox import busy_seconds

MAX_LINE_CHARS = 4 << 20  # decoded in ~0.1 s (json.loads, then one pass over the hashes)
MAX_SAME_HASH = 64  # distinct values of one hash in an answer: a set of n of them costs n^2 / 2 comparisons
REF = "\x00ref"  # marks a handle inside request arguments: (REF, n)
BUILTIN = "\x00builtin"  # marks a builtin type passed as an argument (MBPP 533 passes `int`): (BUILTIN, name)


def _wire(value, depth=0):
    """The JSON-ready form of a value's plain builtin content, else TypeError. Instances of subclasses are read
    through their builtin base (a Counter sends its dict, a namedtuple its tuple, an int subclass its int)."""
    if depth > 100:
        raise ValueError("value nested over 100 deep")
    if value is None or value is True or value is False:
        return value
    if isinstance(value, int):
        number = int.__index__(value)
        return number if number.bit_length() < 13000 else {"\x00i": hex(number)}  # under 4,300 digits: a JSON number
    if isinstance(value, float):
        number = float.__float__(value)
        if number != number:
            raise ValueError("nan has no literal")
        return number
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bytes):
        return {"\x00b": bytes.__bytes__(value).decode("latin-1")}
    if isinstance(value, complex):
        return {"\x00c": [_wire(complex.__complex__(value).real), _wire(complex.__complex__(value).imag)]}
    if isinstance(value, dict):
        return {"\x00d": [[_wire(k, depth + 1), _wire(v, depth + 1)] for k, v in dict.items(value)]}
    if isinstance(value, list):
        return [_wire(v, depth + 1) for v in list.__iter__(value)]
    for base, tag in ((tuple, "\x00t"), (set, "\x00s"), (frozenset, "\x00f")):
        if isinstance(value, base):
            return {tag: [_wire(v, depth + 1) for v in base.__iter__(value)]}
    raise TypeError(f"a {type(value).__name__} is not a plain value")


def encode(value):
    """One line of JSON for a plain value (see _wire). Also runs on the server, as a convenience only."""
    return json.dumps(_wire(value), allow_nan=True)


class Crowded(ValueError):
    """An answer's set or dict keys, or its numbers, collide: a limit of the program, not a malformed answer."""


def _from_wire(obj):
    """json.loads's object hook: a tagged one-key object to its value; sets and dicts are checked first."""
    if len(obj) != 1:
        raise ValueError("an object that is not a tagged value")
    (tag, item), = obj.items()
    if tag == "\x00i" and type(item) is str:
        return int(item, 16)
    if tag == "\x00b" and type(item) is str:
        return item.encode("latin-1")
    if tag == "\x00c" and type(item) is list and len(item) == 2 and all(type(x) in (int, float) for x in item):
        return complex(*item)
    if tag == "\x00t" and type(item) is list:
        return tuple(item)
    if tag in ("\x00s", "\x00f", "\x00d") and type(item) is list:
        keys = [pair[0] for pair in item if type(pair) is list and len(pair) == 2] if tag == "\x00d" else item
        if len(keys) != len(item):
            raise ValueError("a dict item that is not a pair")
        if crowded_hashes(keys):
            raise Crowded(f"an answer with over {MAX_SAME_HASH} distinct values of one hash")
        return dict(item) if tag == "\x00d" else set(item) if tag == "\x00s" else frozenset(item)
    raise ValueError(f"an unknown tag {tag!r}")


def _no_nan(constant):
    if constant == "NaN":
        raise ValueError("nan has no literal")
    return float(constant)


def decode(text):
    return json.loads(text, object_hook=_from_wire, parse_constant=_no_nan)


def crowded_hashes(values) -> bool:
    """Whether over MAX_SAME_HASH distinct values among `values` (hashable) share one hash. Linear: values are
    counted by hash, and only a crowded hash's values are told apart, by a digest of their encoding."""
    counts = Counter(map(hash, values))
    for crowded in [h for h, n in counts.items() if n > MAX_SAME_HASH]:
        same = {hashlib.blake2b(encode(v).encode(), digest_size=8).digest() for v in values if hash(v) == crowded}
        if len(same) > MAX_SAME_HASH:
            return True
    return False


_NUMBERS, _NESTED = (int, float, complex), (list, tuple, set, frozenset, dict)


def _hashable(value) -> bool:
    try:
        hash(value)
        return True
    except TypeError:
        return False


def hashable_parts(value, out=None, depth=0) -> list:
    """The numbers, tuples and frozensets inside a decoded answer: what test code might put in a set or dict.
    (Strings and bytes hash with a per-process secret key, so a program cannot make them collide.)"""
    out = [] if out is None else out
    items = [*value.keys(), *value.values()] if type(value) is dict else value
    if type(value) is frozenset or (type(value) is tuple and _hashable(value)):
        out.append(value)
    out.extend(v for v in items if type(v) in _NUMBERS)
    for nested in [v for v in items if type(v) in _NESTED]:
        if depth < 100:
            hashable_parts(nested, out, depth + 1)
    return out


# The server, run in the sandbox as `python -c SERVER rfd wfd`. Everything in it is
# untrusted once the solution runs (the solution can rewrite it); nothing here relies on it behaving.
# (The server takes the requests' sets and dicts as they come: they are the trusted tests' own values.)
SERVER = "import json\ncrowded_hashes = lambda keys: False\n" + "".join(
    inspect.getsource(f) for f in (_wire, encode, Crowded, _from_wire, _no_nan, decode)) + r'''
import os, sys
rfd, wfd = int(sys.argv[1]), int(sys.argv[2])
requests, answers = os.fdopen(rfd, "r", encoding="utf-8"), os.fdopen(wfd, "w", encoding="utf-8")
source, setup = decode(requests.readline())
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
    answer("raise " + encode((type(e).__name__, str(e)[:300])))
    sys.exit(1)
answer("ok " + encode("ready"))
for line in requests:
    try:
        request = decode(line)
        if request[0] == "get":
            value = ns[request[1]]
        else:
            value = handles[request[1]](*resolve(request[2]), **request[3])
    except BaseException as e:
        answer("raise " + encode((type(e).__name__, str(e)[:300])))
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
        self._session.calls += 1
        return self._session.request(("call", self._handle, self._session.wire(args), self._session.wire(kwargs)))

    def _refuse(self, *_):
        raise TypeError("a value the program did not return as plain data cannot be compared or tested")

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __bool__ = _refuse
    __hash__ = None

    def __repr__(self) -> str:
        return f"<remote object {self._handle}>"


# Builtins give these a meaning when a function they call raises one (a StopIteration ends `map()`, so
# `assert all(map(f, xs))` would pass): from the program they arrive as RemoteError, which means nothing.
_PROTOCOL_EXCEPTIONS = (StopIteration, StopAsyncIteration)


def _exception(name: str, message: str) -> Exception:
    """The program's exception, raised here: its builtin class when it is an ordinary Exception (the tests may
    expect a ValueError), else RemoteError. Marked `from_program` (a MemoryError here is the program's own)."""
    cls = getattr(builtins, name, None) if isinstance(name, str) else None
    error = None
    if isinstance(cls, type) and issubclass(cls, Exception) and not issubclass(cls, _PROTOCOL_EXCEPTIONS):
        try:
            error = cls(message)
        except Exception:  # noqa: BLE001 - e.g. UnicodeDecodeError needs five arguments
            pass
    error = error or RemoteError(f"{name}: {message}")
    error.from_program = True
    return error


class Session:
    """The trusted end of the channel: `proc` is the sandboxed server, `to_server`/`from_server` its pipe fds.

    `stall_s` is the backstop for a program that waits without using CPU (a sleep, a blocked read): the session
    breaks once the program has spent that long neither running nor waiting for a CPU while this side waited
    for it, so however loaded the machine, an honest program within its CPU limit is never cut off.
    `answer_cpu_s` bounds this process's CPU time spent reading the program's answers."""

    def __init__(self, proc, to_server: int, from_server: int, stall_s: float, answer_cpu_s: float):
        self.proc, self._out, self._in, self.stall_s, self.answer_cpu_s = proc, to_server, from_server, stall_s, answer_cpu_s
        self._buffer = b""
        self.failure: str | None = None
        self.limit = False  # the failure is a limit of the sandbox the program went past
        self.calls = 0  # calls of the program's functions (not counting fetching them)
        self.stalled = self.answer_cpu = 0.0

    def fail(self, why: str, limit: bool = False) -> Broken:
        if not self.failure:
            self.failure, self.limit = why, limit
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
        """Until fd is ready; time the program spends blocked meanwhile counts against stall_s."""
        def ready(timeout: float) -> bool:
            return bool(select.select([], [fd], [], timeout)[1] if for_write else select.select([fd], [], [], timeout)[0])

        while not ready(0):  # look in slices, so the guard's parent hears how busy the program is (progress.py)
            start, busy = time.monotonic(), busy_seconds(self.proc)
            done = ready(min(max(self.stall_s - self.stalled, 0.0), 1.0))
            ran = busy_seconds(self.proc)
            ran = ran - busy if ran is not None and busy is not None else 0.0
            report_busy(ran)
            self.stalled += max(time.monotonic() - start - ran, 0.0)
            if done:
                return
            if self.stalled >= self.stall_s:
                raise self.fail(f"timed out: blocked over {self.stall_s:g}s without using CPU", limit=True)

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
                raise self.fail(f"an answer over {MAX_LINE_CHARS:,} bytes", limit=True)
            self._wait(self._in, False)
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise self.fail("the program exited")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        if len(line) > MAX_LINE_CHARS:
            raise self.fail(f"an answer over {MAX_LINE_CHARS:,} bytes", limit=True)
        return line.decode("utf-8", errors="replace")

    def _decode(self, kind: str, text: str):
        """(kind, value), kind None when malformed; the CPU it takes is counted, collisions are refused."""
        start = time.process_time()
        try:
            value = decode(text) if kind in ("ok", "raise") else int(text) if kind == "ref" else None
            if kind == "ok" and crowded_hashes(hashable_parts([value])):
                raise Crowded(f"an answer with over {MAX_SAME_HASH} distinct values of one hash")
            return kind, value
        except Crowded as e:
            raise self.fail(str(e), limit=True) from None
        except (ValueError, TypeError, MemoryError, RecursionError):
            return None, None
        finally:
            self.answer_cpu += time.process_time() - start
            if self.answer_cpu > self.answer_cpu_s:
                raise self.fail(f"answers that took over {self.answer_cpu_s:g}s of CPU to read", limit=True)

    def answer(self):
        """The decoded answer: a plain value, a RemoteObject, or the program's exception raised here."""
        if self.failure:
            raise Broken(self.failure)
        kind, value = self._decode(*self._line().partition(" ")[::2])
        if kind == "ok":
            return value
        if kind == "ref" and type(value) is int:
            return RemoteObject(self, value)
        if kind == "raise" and type(value) is tuple and len(value) == 2 and all(type(v) is str for v in value):
            raise _exception(*value)
        raise self.fail("a malformed answer")

    def request(self, request: tuple):
        try:
            self.send(encode(request))
        except (TypeError, ValueError) as e:
            raise self.fail(f"the tests passed a value that is not plain data: {e}") from None
        return self.answer()
