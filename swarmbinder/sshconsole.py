"""The admin console served over SSH, for operators who have a key but no shell on the manager.

:func:`serve` runs an asyncssh server that accepts public keys from an authorized_keys file
(re-read at every connection, so a replaced file applies to the next login) and, for every
session, runs one fixed command (``swarmbinder admin ...``) on a fresh pseudo-terminal, bridged
to the SSH channel. Whatever the client asks to run, it gets that command: there is no shell,
no sftp or scp, no port, agent or X11 forwarding. A session without a terminal is refused in
one line with exit status 2. The console's own exit ends the session.

Nothing here knows the admin token: the command reads it from a file, and its argv (which may
name the file) is never logged with a session.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import pty
import re
import signal
import socket
import struct
import sys
import termios
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from .errors import SwarmbinderError
from .sshkeys import AuthorizedKeysError, authorized_keys_checked

log = logging.getLogger("swarmbinder.sshconsole")

NO_TERMINAL = b"the swarmbinder console needs a terminal: use ssh -t\n"

#: Runs first in every session's child: makes the pty its controlling terminal (so resizes
#: reach it as SIGWINCH and a hang-up as SIGHUP), then becomes the console. Done in the child
#: rather than with preexec_fn, which is unsafe once the event loop has threads.
_LOGIN_TTY = "import os, sys; os.login_tty(0); os.execv(sys.argv[1], sys.argv[1:])"

#: Puts the client's terminal back (main screen, cursor, no mouse reports or bracketed paste)
#: when a console could not do it itself: killed, or stopped by a shutdown.
TERMINAL_RESET = (
    b"\x1b[0m\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l\x1b[?2004l\x1b[?25h\x1b[?1049l"
)

#: How long a console gets to exit after SIGTERM before it is killed.
STOP_GRACE = 3.0
#: How long a stopping server waits for a client to acknowledge the end of its session.
CHANNEL_CLOSE_GRACE = 5.0

_TERM_NAME = re.compile(r"[A-Za-z0-9._+-]{1,64}")


class ConsoleSetupError(SwarmbinderError):
    """A key file or the listening address is unusable; one line for the operator."""


@dataclass(frozen=True)
class ConsoleOptions:
    #: the argv every session runs on its terminal (an absolute program path first)
    command: tuple[str, ...]
    authorized_keys: Path
    host_key: Path
    listen: str = "0.0.0.0"
    port: int = 2222
    max_sessions: int = 8


def read_authorized_keys(path: Path) -> asyncssh.SSHAuthorizedKeys:
    """The keys allowed in; raises ConsoleSetupError when the file is unreadable or holds none."""
    try:
        return authorized_keys_checked(path)[1]
    except AuthorizedKeysError as e:
        raise ConsoleSetupError(str(e)) from None


def load_host_key(path: Path) -> asyncssh.SSHKey:
    """The server's host key from ``path``; a new ed25519 key is written there if it is missing
    (so a test or a single machine needs no setup; a stack passes a secret instead)."""
    if not path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key.export_private_key())
        except OSError as e:
            raise ConsoleSetupError(
                f"no host key at {path} and cannot write a new one: {e.strerror or e}"
            ) from None
        log.info("generated host key %s (%s)", path, key.get_fingerprint())
        return key
    try:
        return asyncssh.read_private_key(path)
    except OSError as e:
        raise ConsoleSetupError(f"cannot read the host key {path}: {e.strerror or e}") from None
    except (asyncssh.KeyImportError, ValueError):
        raise ConsoleSetupError(f"the host key {path} is not an unencrypted private key") from None


def bind(listen: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else starts, so a taken port is one line."""
    try:
        return socket.create_server((listen, port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ConsoleSetupError(f"port {port} on {listen} is already in use") from None
        if e.errno == errno.EACCES:
            raise ConsoleSetupError(f"not allowed to listen on port {port} on {listen}") from None
        raise ConsoleSetupError(f"cannot listen on {listen}:{port}: {e.strerror or e}") from None


def _set_window(fd: int, columns: int, rows: int, width: int, height: int) -> None:
    size = struct.pack("HHHH", max(rows, 1), max(columns, 1), width, height)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, size)


class ConsoleServer:
    """The listener, its connections and their running consoles."""

    def __init__(self, options: ConsoleOptions) -> None:
        self.options = options
        # Checked once at start so a wrong path fails the command instead of every login.
        read_authorized_keys(options.authorized_keys)
        self.host_key = load_host_key(options.host_key)
        self.sessions: set[_Session] = set()
        self.connections: set[asyncssh.SSHServerConnection] = set()
        self._acceptor: asyncssh.SSHAcceptor | None = None

    async def start(self, sock: socket.socket) -> None:
        self._acceptor = await asyncssh.create_server(
            lambda: _Connection(self),
            sock=sock,
            server_host_keys=[self.host_key],
            # Only public keys: no passwords, keyboard-interactive or host-based logins.
            password_auth=False,
            kbdint_auth=False,
            host_based_auth=False,
            agent_forwarding=False,
            x11_forwarding=False,
            allow_scp=False,
            sftp_factory=None,
            # Bytes straight through to the pty; the console draws its own screen.
            encoding=None,
            line_editor=False,
            login_timeout=30,
            keepalive_interval=30,
        )

    def running(self) -> int:
        return sum(1 for session in self.sessions if session.console_running)

    async def close(self) -> None:
        """Stop listening, stop every console (each child gets SIGTERM, then SIGKILL), then
        close the connections."""
        if self._acceptor is not None:
            self._acceptor.close()
        sessions = list(self.sessions)
        await asyncio.gather(*(session.stop() for session in sessions))
        for conn in list(self.connections):
            conn.close()
        for conn in list(self.connections):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 5)
        if self._acceptor is not None:
            await self._acceptor.wait_closed()


class _Connection(asyncssh.SSHServer):
    """One client: public-key login, sessions only, every forwarding refused."""

    def __init__(self, server: ConsoleServer) -> None:
        self.server = server
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer = "?"
        self.user = "?"
        self.fingerprint = "?"
        self._keys: asyncssh.SSHAuthorizedKeys | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        host, port = conn.get_extra_info("peername", ("?", 0))[:2]
        self.peer = f"{host}:{port}"
        self.server.connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.server.connections.discard(self.conn)
        log.info("connection from %s (user %s) closed", self.peer, self.user)

    def begin_auth(self, username: str) -> bool:
        self.user = username
        try:
            # Re-read for each connection: a replaced file applies to the next login.
            self._keys = read_authorized_keys(self.server.options.authorized_keys)
        except ConsoleSetupError as e:
            log.error("refusing %s: %s", self.peer, e)
            self._keys = None
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        if self._keys is None or self.conn is None:
            return False
        host, _ = self.conn.get_extra_info("peername", ("", 0))[:2]
        if self._keys.validate(key, str(host), str(host)) is None:
            log.info("%s offered a key not authorized: %s", self.peer, key.get_fingerprint())
            return False
        # The last key accepted is the one the client signs with next.
        self.fingerprint = key.get_fingerprint()
        return True

    def auth_completed(self) -> None:
        log.info("user %s logged in from %s with key %s", self.user, self.peer, self.fingerprint)

    def session_requested(self) -> _Session:
        return _Session(self.server, f"{self.user}@{self.peer}")

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool:
        log.info("refused a forward to %s:%d from %s", dest_host, dest_port, self.peer)
        return False

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        log.info("refused a remote forward of %s:%d from %s", listen_host, listen_port, self.peer)
        return False

    def unix_connection_requested(self, dest_path: str) -> bool:
        log.info("refused a socket forward from %s", self.peer)
        return False

    def unix_server_requested(self, listen_path: str) -> bool:
        log.info("refused a remote socket forward from %s", self.peer)
        return False


class _Session(asyncssh.SSHServerSession[bytes]):
    """One SSH session: the console on a pseudo-terminal, or a refusal."""

    def __init__(self, server: ConsoleServer, who: str) -> None:
        self.server = server
        self.who = who
        self.console_running = False
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._term: str | None = None
        self._size = (80, 24, 0, 0)
        self._master: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._input = bytearray()
        self._output_done: asyncio.Future[None] | None = None
        self._reading = False
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # --- what the client asks for

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._chan = chan

    def pty_requested(
        self, term_type: str, term_size: tuple[int, int, int, int], term_modes: object
    ) -> bool:
        self._term = term_type if _TERM_NAME.fullmatch(term_type or "") else "xterm-256color"
        if term_size[0] and term_size[1]:
            self._size = term_size
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        # Accepted, and ignored: whatever was asked for, the session runs the console.
        log.info("%s asked to run %r; it gets the console instead", self.who, command[:80])
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        log.info("refused subsystem %r for %s", subsystem[:40], self.who)
        return False

    def session_started(self) -> None:
        self.server.sessions.add(self)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        self._size = (width, height, pixwidth, pixheight)
        if self._master is not None:
            with contextlib.suppress(OSError):
                _set_window(self._master, width, height, pixwidth, pixheight)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self._master is None:
            return
        self._input += data
        self._flush_input()

    def eof_received(self) -> bool:
        # Keep the channel open: the console decides when the session ends.
        return True

    def break_received(self, msec: int) -> bool:
        return False

    def signal_received(self, signal: str) -> None:
        log.info("ignored signal %s from %s", signal[:20], self.who)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def pause_writing(self) -> None:
        # The client is slow: stop reading the console's output until the channel drains.
        self._stop_reading()

    def resume_writing(self) -> None:
        self._start_reading()

    # --- running the console

    async def stop(self) -> None:
        """End the session (server shutdown): the console is stopped before this returns."""
        if self._task is not None and not self._task.done():
            self._closing = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # The last words and the exit status may still wait for the client's window; closing
        # the connection before the channel has closed would drop them (ssh then says 255).
        if self._chan is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._chan.wait_closed(), CHANNEL_CLOSE_GRACE)

    async def _run(self) -> None:
        try:
            if self._term is None:
                log.info("refused %s: no terminal requested", self.who)
                self._finish(2, stderr=NO_TERMINAL)
                return
            limit = self.server.options.max_sessions
            if self.server.running() >= limit:
                log.warning("refused %s: %d consoles already running", self.who, limit)
                self._finish(1, f"too many admin consoles open ({limit}); try again later\r\n")
                return
            self.console_running = True
            try:
                code = await self._console(self._term)
            except asyncio.CancelledError:
                if self._closing:  # the client may still be there: tell it why
                    self._finish(
                        1, TERMINAL_RESET + b"\r\nthe admin console service is stopping\r\n"
                    )
                raise
            log.info("console of %s exited with status %d", self.who, code)
            self._finish(code, TERMINAL_RESET if code != 0 else b"")
        finally:
            self.console_running = False
            self.server.sessions.discard(self)

    def _finish(self, code: int, output: bytes | str = b"", *, stderr: bytes = b"") -> None:
        """Last words and the exit status, unless the client has gone in the meantime."""
        chan = self._chan
        assert chan is not None
        with contextlib.suppress(OSError):  # BrokenPipeError: the channel closed first
            if output:
                chan.write(output.encode() if isinstance(output, str) else output)
            if stderr:
                chan.write_stderr(stderr)
            chan.exit(code)

    async def _console(self, term: str) -> int:
        master, slave = pty.openpty()
        self._master = master
        try:
            columns, rows, width, height = self._size
            _set_window(master, columns, rows, width, height)
            os.set_blocking(master, False)
            env = {
                "PATH": os.environ.get("PATH", os.defpath),
                "HOME": os.environ.get("HOME", "/"),
                "TERM": term,
                "LANG": "C.UTF-8",
            }
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-c",
                    _LOGIN_TTY,
                    *self.server.options.command,
                    stdin=slave,
                    stdout=slave,
                    stderr=slave,
                    env=env,
                )
            finally:
                # Only the child holds the terminal now: its exit makes reads on master fail.
                os.close(slave)
            self._output_done = asyncio.get_running_loop().create_future()
            self._start_reading()
            code = await self._proc.wait()
            # The last frame (the console restoring the screen) may still be in the pty.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._output_done), 2)
            return code if code >= 0 else 128 - code
        finally:
            await self._stop_child()
            self._stop_reading()
            loop = asyncio.get_running_loop()
            loop.remove_writer(master)
            self._master = None
            os.close(master)

    async def _stop_child(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), STOP_GRACE)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    def _start_reading(self) -> None:
        done = self._output_done
        if self._master is not None and not self._reading and done is not None and not done.done():
            asyncio.get_running_loop().add_reader(self._master, self._read_output)
            self._reading = True

    def _stop_reading(self) -> None:
        if self._master is not None and self._reading:
            asyncio.get_running_loop().remove_reader(self._master)
        self._reading = False

    def _read_output(self) -> None:
        assert self._master is not None and self._chan is not None
        try:
            data = os.read(self._master, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # EIO: every holder of the terminal's other end has closed it
        if not data:
            self._stop_reading()
            if self._output_done is not None and not self._output_done.done():
                self._output_done.set_result(None)
            return
        self._chan.write(data)

    def _flush_input(self) -> None:
        assert self._master is not None
        loop = asyncio.get_running_loop()
        try:
            written = os.write(self._master, self._input)
        except BlockingIOError:
            written = 0
        except OSError:
            self._input.clear()  # the console is gone; its session ends on its own
            return
        del self._input[:written]
        if self._input:
            loop.add_writer(self._master, self._flush_input)
        else:
            loop.remove_writer(self._master)


async def serve(server: ConsoleServer, sock: socket.socket) -> None:
    """Serve consoles on ``sock`` until SIGTERM or SIGINT, then stop every one of them."""
    # asyncssh logs every channel request at INFO; our own lines say who did what.
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    await server.start(sock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    host, port = sock.getsockname()[:2]
    log.info(
        "admin console over SSH on %s:%d (host key %s, at most %d consoles)",
        host,
        port,
        server.host_key.get_fingerprint(),
        server.options.max_sessions,
    )
    try:
        await stop.wait()
        log.info("shutting down: stopping %d consoles", server.running())
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await server.close()
