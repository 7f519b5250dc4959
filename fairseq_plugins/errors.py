"""One-line errors for the user's mistakes.

fairseq's command-line tools let exceptions reach the interpreter, which prints a traceback: fine
for a bug, noise for a wrong flag or a bad checkpoint. Errors of the classes below are a user's
mistake whose message already names the culprit (flag, file, field); importing the user-dir
installs a ``sys.excepthook`` that prints them as one line (``fairseq-train: error: MESSAGE``) and
leaves every other exception to the previous hook, traceback included. The exit status stays 1.
"""
import logging
import os
import re
import sys
import threading


class UserInputError(Exception):
    """A mistake in what the user gave (a flag, a file): reported as one line, without a traceback."""


class FlagError(UserInputError, ValueError):
    """A command-line value out of range; the message names the flag."""


class CheckpointLoadError(UserInputError, RuntimeError):
    """A checkpoint could not be loaded, or was refused; the message names the file and why."""


def flag_error(error: ValueError, flags=None) -> FlagError:
    """Translates a ``ValueError`` of the plain-PyTorch library into one naming the fairseq flag.

    The library's option errors carry ``field`` (its keyword argument), ``requirement`` and ``value``;
    ``flags`` maps a field to its flag where the two names differ (default: ``--field-with-dashes``).
    Errors without ``field`` keep their message.
    """
    field = getattr(error, "field", None)
    if field is None:
        return FlagError(str(error))
    flag = (flags or {}).get(field, "--" + field.replace("_", "-"))
    return FlagError(f"{flag} must be {error.requirement}, got {error.value!r}")


# A worker started by torch.multiprocessing.spawn (fairseq on several GPUs) sends its traceback to
# the parent as text, ending with 'module.Class: message'.
_WORKER_LAST_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+): (.*)$")


def one_line_message(error: BaseException):
    """The line to print for ``error``, or None when it is not a user's mistake."""
    if isinstance(error, UserInputError):
        return " ".join(str(error).split("\n"))
    # fairseq re-raises some failures as a bare Exception with a generic message ("Cannot load model
    # parameters from checkpoint ...; please ensure that the architectures match"): the user's mistake
    # it was raised while handling says more.
    cause = error.__cause__ or error.__context__
    if type(error) is Exception and cause is not None:
        return one_line_message(cause)
    if type(error).__name__ == "ProcessRaisedException":  # torch.multiprocessing, from a spawned worker
        lines = [line for line in str(error).splitlines() if line.strip()]
        match = _WORKER_LAST_LINE.match(lines[-1]) if lines else None
        if match and _is_user_error_class(match.group(1)):
            return match.group(2)
    return None


def _is_user_error_class(name: str) -> bool:
    pending = [UserInputError]
    while pending:
        cls = pending.pop()
        if cls.__name__ == name:
            return True
        pending.extend(cls.__subclasses__())
    return False


def report_user_errors_in_one_line(exc_type, exc_value, exc_traceback):
    message = one_line_message(exc_value)
    if message is None:
        return _previous_excepthook(exc_type, exc_value, exc_traceback)
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] not in ("", "-c") else "python"
    print(f"{program}: error: {message}", file=sys.stderr, flush=True)
    if any(thread.daemon and thread.is_alive() for thread in threading.enumerate()):
        # fairseq-train's data prefetch runs in a daemon thread; Python's shutdown kills such a thread
        # wherever it is, and inside a torch op that aborts the process ("terminate called without an
        # active exception", exit 134). The error has been reported and every finally block has run:
        # end here, with the status an uncaught error has.
        logging.shutdown()
        sys.stdout.flush()
        os._exit(1)


def install_excepthook():
    global _previous_excepthook
    if sys.excepthook is not report_user_errors_in_one_line:
        _previous_excepthook = sys.excepthook
        sys.excepthook = report_user_errors_in_one_line


_previous_excepthook = sys.__excepthook__
