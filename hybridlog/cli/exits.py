"""The one place the ``hybridlog`` command maps the library's error tree to exit codes.

Exit codes (also in the README):

    0  success
    1  error (the message names the problem and, where there is one, the command that fixes it)
    2  usage error (bad arguments)
    3  verification found damage (also ``repair --dry-run`` with a plan to apply); a proof, signed
     head or receipt that does not check out; a store that does not extend a signed head
  130  interrupted (Ctrl-C), one line on stderr
  141  stdout closed early by its reader (``| head``): the output stops quietly

Commands raise ``DamageFound`` or ``Interrupted`` themselves where they find damage or are stopped
mid-way; everything else the library raises is mapped by ``HybridlogGroup``, the group's class.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from hybridlog.errors import IntegrityError, ProofError, StorageError, StorageLocked

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DAMAGE = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a tool its reader stopped early

LOCKED_HINT = (
    "stop that process, or run this command once it has finished; read, tail, verify, check, stats and sql"
    " need no lock and work beside it"
)


class DamageFound(click.ClickException):
    """Verification or a check found damage: exit code 3."""

    exit_code = EXIT_DAMAGE


class Interrupted(click.ClickException):
    """Ctrl-C stopped the command: exit code 130 (128 + SIGINT), one line on stderr."""

    exit_code = EXIT_INTERRUPTED


class HybridlogGroup(click.Group):
    """Maps the library's error tree to exit codes, in one place: one line on stderr, no traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command, turning each library error into its exit code and one line on stderr."""
        try:
            return super().invoke(ctx)
        except (IntegrityError, ProofError) as e:  # damage, or a proof, head or receipt that fails
            raise DamageFound(str(e)) from e
        except StorageLocked as e:  # the library's hint (read_only=True) means nothing on the command line
            raise click.ClickException(f"{e.message} (hint: {LOCKED_HINT})") from e
        except StorageError as e:
            raise click.ClickException(str(e)) from e
        except BrokenPipeError:
            # The reader of stdout is gone (``| head``): nothing more to say to anyone.
            _stdout_to_devnull()
            raise click.exceptions.Exit(EXIT_BROKEN_PIPE) from None
        except OSError as e:
            raise click.ClickException(f"{e.strerror or e}: {e.filename or ''}".rstrip(": ")) from e
        except KeyboardInterrupt:
            raise Interrupted("interrupted") from None
        except click.Abort as e:
            if isinstance(e.__context__, KeyboardInterrupt):  # Ctrl-C at a prompt (click.confirm)
                click.echo(err=True)  # ends the prompt's line, so the error is a line of its own
                raise Interrupted("interrupted") from None
            raise


def _stdout_to_devnull() -> None:
    """Point stdout's file descriptor at /dev/null, so that Python's flush of what is still buffered,
    at exit, does not fail again and print a traceback."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (CliRunner): nothing to flush at exit
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
