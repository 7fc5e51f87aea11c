"""Prints the requirements an image installs, read from setup.cfg, so the Dockerfiles never repeat them.

Usage: python3 requirements.py [--without NAME]... [EXTRA]... > requirements.txt

Prints install_requires and the named extras of setup.cfg (in the current
directory), one per line, leaving out the distributions named by --without
(a GPU or TPU image drops tensorflow-cpu and brings its own TensorFlow).
Installed with `pip install -c requirements.lock -r requirements.txt`, this
layer only depends on setup.cfg and the lock file, not on the source, so
docker reuses it across code changes. Standard library only: it runs before
anything is installed.
"""

import argparse
import configparser
import re
import sys


def _name(requirement: str) -> str:
    """The normalized distribution name of a requirement line (PEP 503)."""
    return re.sub(r"[-_.]+", "-", re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0]).lower()


def requirements(setup_cfg: str, extras: list[str], without: list[str]) -> list[str]:
    """Returns install_requires plus `extras`, minus the distributions in `without`.

    Raises:
      KeyError: an extra that setup.cfg does not declare.
    """
    config = configparser.ConfigParser()
    if not config.read(setup_cfg):
        raise FileNotFoundError(f"{setup_cfg}: expected setup.cfg in the current directory, found nothing")
    declared = config["options.extras_require"]
    lines = config["options"]["install_requires"].splitlines()
    for extra in extras:
        if extra not in declared:
            raise KeyError(f"{setup_cfg}: extra {extra!r} is not declared; expected one of {', '.join(declared)}")
        lines += declared[extra].splitlines()
    dropped = {_name(n) for n in without}
    return [line.strip() for line in lines if line.strip() and _name(line.strip()) not in dropped]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("extras", nargs="*")
    parser.add_argument("--without", action="append", default=[], metavar="NAME")
    parser.add_argument("--setup_cfg", default="setup.cfg")
    args = parser.parse_args(argv)
    try:
        print("\n".join(requirements(args.setup_cfg, args.extras, args.without)))
    except (KeyError, FileNotFoundError) as e:
        print(f"requirements.py: error: {e.args[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
