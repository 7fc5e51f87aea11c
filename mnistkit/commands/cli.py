"""What every `mnist-*` command shares: clean errors instead of tracebacks."""

import errno
import os
import re
import sys

from absl import app, flags

from mnistkit import train_config


class UserError(Exception):
    """An input a user gave is wrong; the message says which and why."""


def prog_name() -> str:
    """The command's name as users know it: `mnist-download` also under `python -m mnistkit.commands.download`."""
    name = os.path.basename(sys.argv[0])
    return f"mnist-{name[:-3]}" if name.endswith(".py") else name


# What to do about an error of the machine, by errno.
_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or choose another directory",
    errno.EDQUOT: "the disk quota is used up: free some space or choose another directory",
    errno.EFBIG: "the file is larger than this file system allows: choose another directory",
    errno.EROFS: "the file system is read-only: choose a writable directory",
    errno.EACCES: "this user may not read or write there: fix its permissions or choose another path",
    errno.EPERM: "this user may not read or write there: fix its permissions or choose another path",
    errno.ENOENT: "it does not exist, or vanished while the command ran",
    errno.EMFILE: "the process ran out of file descriptors: raise the limit (ulimit -n) and run again",
    errno.ENFILE: "the system ran out of file descriptors: close other programs and run again",
    errno.EIO: "the device reported an input/output error: check the disk",
}


def say(text: str) -> None:
    """Prints a finished step's result (the path it wrote) on stdout; a reader that went away does not matter.

    The work is done: `mnist-export | head -0` failing at the print made a script that retries write a
    second version. Stdout then points at /dev/null, so that the interpreter's last flush stays quiet too.
    """
    try:
        print(text, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def describe_os_error(error: OSError) -> str:
    """'PATH: cause; what to do' for an error of the machine, or the error's own message when it has no cause."""
    if error.strerror is None:
        return str(error)  # A message written by this project, which already names the path.
    hint = _HINTS.get(error.errno)
    where = "" if error.filename is None else f"{error.filename}: "
    return f"{where}{error.strerror}" + (f"; {hint}" if hint else "")


# The flags that name a local path, in every command that has them. A gs:// value is read and written through
# Cloud Storage FUSE at /gcs, as Vertex AI mounts it (files.local_path); where no mount exists it is refused in
# one line before anything runs, rather than taken for a relative directory named "gs:".
PATH_FLAGS = ("data_dir", "model_dir", "export_dir", "output", "report_dir")


def _check_path_flags() -> None:
    """Refuses a path flag given empty; maps gs:// values to the Cloud Storage FUSE mount."""
    from absl import flags

    from mnistkit import files

    for name in PATH_FLAGS:
        if name in flags.FLAGS and flags.FLAGS[name].present and not flags.FLAGS[name].value:
            # Given, but empty: `--report_dir=$DIR` with DIR unset wrote no report, `--output=` the default file.
            raise UserError(f"--{name}: expected {'a file path' if name == 'output' else 'a directory'}, found an "
                            "empty path")
        # Blanks are left to the command, which names what it expected there.
        if name in flags.FLAGS and isinstance(flags.FLAGS[name].value, str) and flags.FLAGS[name].value.strip():
            flags.FLAGS[name].value = files.local_path(flags.FLAGS[name].value, f"--{name}")


class DecimalInteger(flags.IntegerParser):
    """absl's integer flag in decimal ASCII digits only, as the pipeline reads numbers: absl also read 0x10 as
    16 and Python 1_000 as 1000. Out of bounds says 'expected ..., found ...'."""

    def convert(self, argument):
        if isinstance(argument, str) and not train_config.INTEGER_TEXT.fullmatch(argument.strip()):
            raise ValueError(f"expected a decimal integer, found {argument!r}")
        return super().convert(argument.strip() if isinstance(argument, str) else argument)

    def parse(self, argument):
        return _in_bounds(self, self.convert(argument))


class DecimalFloat(flags.FloatParser):
    """absl's float flag without 1_0e-3 or other scripts' digits, as the pipeline reads numbers (nan and inf go
    on to the checks that say they are not finite)."""

    def convert(self, argument):
        if isinstance(argument, str) and ("_" in argument or not argument.isascii()):
            raise ValueError(f"expected a number in ASCII digits, found {argument!r}")
        try:
            return super().convert(argument)
        except ValueError:  # Python's "could not convert string to float: ''".
            raise ValueError(f"expected a number, found {argument!r}") from None

    def parse(self, argument):
        return _in_bounds(self, self.convert(argument))


def _in_bounds(parser, value):
    if parser.is_outside_bounds(value):
        article = "a " if parser.syntactic_help.startswith("number") else ""  # absl's "number >= 0.1".
        raise ValueError(f"expected {article}{parser.syntactic_help}, found {value}")
    return value


def define_integer(name: str, default, help: str, lower_bound=None, **kwargs):
    return flags.DEFINE(DecimalInteger(lower_bound=lower_bound), name, default, help, **kwargs)


def define_float(name: str, default, help: str, lower_bound=None, **kwargs):
    return flags.DEFINE(DecimalFloat(lower_bound=lower_bound), name, default, help, **kwargs)


# How absl words a flag it could not take: "flag --NAME=VALUE: MESSAGE".
_FLAG_ERROR = re.compile(r"flag --(?P<name>[^=\s]+)=(?P<value>.*?): (?P<message>.*)", re.DOTALL)


def describe_flag_error(error: Exception) -> str:
    """absl's parsing error in the project's words: '--NAME: expected ..., found ...'."""
    if isinstance(error, flags.UnrecognizedFlagError):
        said = re.search(r"Did you mean: (.*) \?$", str(error))  # absl keeps its suggestions only in the text.
        suggestions = [f"--{name}" for name in said[1].split(", ")] if said else []
        return (f"--{error.flagname}: no such flag (--help lists this command's)"
                + (f"; did you mean {' or '.join(suggestions)}?" if suggestions else ""))
    text = str(error)
    flagfile = "ERROR:: Unable to open flagfile: "
    if text.startswith(flagfile):
        return f"--flagfile: expected a readable file of flags, found {text.removeprefix(flagfile)}"
    m = _FLAG_ERROR.fullmatch(text)
    if not m:
        return text
    name, value, message = m["name"], m["value"], m["message"]
    if message.endswith("must have a value other than None."):
        return f"--{name}: expected a value, found none"
    if message.startswith("('Non-boolean argument to boolean flag'"):
        return f"--{name}: expected true or false (or --{name} and --no{name}), found {value!r}"
    message = message.replace("value should be one of ", "expected one of ")
    return f"--{name}: {message}" if ", found " in message else f"--{name}: {message}, found {value!r}"


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, its errors in one line as every other error of these commands; and no stray words.

    `mnist-train --nesterov false` set --nesterov and left 'false' as an argument that nothing read: no
    command takes arguments other than flags, so one left over is refused.
    """
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        print(f"{prog_name()}: error: {describe_flag_error(e)}", file=sys.stderr)
        sys.exit(1)
    if rest[1:]:
        print(f"{prog_name()}: error: expected flags only (--name=value; a true/false flag as --name or "
              f"--noname), found the argument {rest[1]!r}", file=sys.stderr)
        sys.exit(1)
    return rest


def _as_flag(message: str) -> str:
    """'--NAME: ...' for the library's 'NAME: ...' where NAME is one of the command's flags: the library names
    its settings (TrainConfig's, DownloadConfig's), the command line knows them as flags."""
    name, sep, rest = message.partition(": ")
    return f"--{name}: {rest}" if sep and re.fullmatch(r"[a-z][a-z0-9_]*", name) and name in flags.FLAGS else message


def run(main) -> None:
    """Runs an absl `main`, turning errors about inputs and of the machine into one line and exit 1.

    Errors of the machine (a full disk, a read-only or vanished directory, too
    many open files) arrive as OSError(errno, strerror, filename), whichever
    step of whichever command met them; they print as 'PATH: cause; hint'.
    """
    from mnistkit import fetch, idx  # Light modules: no TensorFlow.

    expected = (UserError, idx.DataError, fetch.FetchError, ValueError)

    def guarded(argv):
        try:
            _check_path_flags()
            return main(argv)
        except expected as e:
            print(f"{prog_name()}: error: {_as_flag(str(e))}", file=sys.stderr)
            sys.exit(1)
        except OSError as e:
            print(f"{prog_name()}: error: {describe_os_error(e)}", file=sys.stderr)
            sys.exit(1)
        except MemoryError as e:  # An allocation past the address-space limit (ulimit -v, a container's memory).
            print(f"{prog_name()}: error: out of memory ({str(e) or 'MemoryError'}); free memory or raise the "
                  "process's limit (ulimit -v, the container's memory) and run again", file=sys.stderr)
            sys.exit(1)

    # absl's --help lists the flags of sys.argv[0]'s module: a console script's wrapper, which declares none.
    for flag in flags.FLAGS.get_key_flags_for_module(sys.modules[main.__module__]):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(guarded, flags_parser=_parse_flags)
