"""`emotalk-fast`: animate, preview, info, convert, stream, stream-eval, bench, serve, send, health, train, eval.

Argument parsing and printing only; each command group registers itself:
options.py   what the commands share (model and stream options, the model loader, style parsers)
animate.py   animate, preview, info, convert
stream.py    stream, stream-eval, bench
serve.py     serve, send, health
and emotalk_fast.training.cli adds train and eval.

The user's errors (emotalk_fast.errors.UserError: bad input, a bad option or checkpoint; and
file-system errors) print one line and exit 1; anything else is a bug and shows its traceback
(as does every error with --debug).
"""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import UserError
from . import animate, serve, stream
from .options import HelpFormatter, OneLineParser, parser_with


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    from ..training.cli import register as register_training  # imports only argparse and its config

    p = OneLineParser(prog="emotalk-fast", description="Speech to 52 ARKit blendshapes with EmoTalk.",
                      formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version=f"emotalk-fast {__version__}")
    p.add_argument("--debug", action="store_true", help="show the traceback of every error")
    sub = p.add_subparsers(dest="command", required=True, parser_class=parser_with(HelpFormatter))
    for group in (animate, stream, serve):
        group.register(sub)
    register_training(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    import warnings

    args = build_parser().parse_args(argv)

    def one_line(message, category, filename, lineno, file=None, line=None):
        print(f"emotalk-fast {args.command}: warning: {message}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():  # restored on return: a library user's process is unchanged
        warnings.showwarning = one_line
        try:
            args.func(args)
        except BrokenPipeError:  # whatever read stdout has gone (`... | head`): stop quietly, as a pipe's writer does
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
            return 141  # 128 + SIGPIPE, what a writer killed by the closed pipe returns
        except (UserError, OSError) as e:
            if args.debug:
                raise
            print(f"emotalk-fast {args.command}: error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"emotalk-fast {args.command}: interrupted", file=sys.stderr)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
