"""The ``poolkit`` command line.

``poolkit ops`` lists every registered operator and the backends that
implement it; ``poolkit shape`` prints the geometry of one pooling call as
JSON. Bad arguments give a one-line error and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from .errors import PoolingError
from .registry import BACKENDS, operators


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _cmd_ops(args: argparse.Namespace) -> int:
    infos = operators()
    if args.json:
        print(json.dumps([i.to_dict() for i in infos], indent=2))
        return 0
    rows = [("operator", "family", "ndims", *BACKENDS, "summary")]
    for i in infos:
        nds = ",".join(f"{n}d" for n in i.ndims) or "any"
        marks = tuple("yes" if b in i.backends else "-" for b in BACKENDS)
        rows.append((i.name, i.family, nds, *marks, i.summary))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[-1])
    print(f"\n{len(infos)} operators")
    return 0


def _parse_padding(values: Sequence[str]) -> Any:
    if len(values) == 1 and values[0].lower() in ("same", "valid"):
        return values[0].lower()
    out: list[Any] = []
    for v in values:
        if ":" in v:
            lo, hi = v.split(":", 1)
            out.append((_to_int("--padding", lo), _to_int("--padding", hi)))
        else:
            out.append(_to_int("--padding", v))
    return out[0] if len(out) == 1 and not isinstance(out[0], tuple) else out


def _to_int(flag: str, v: str) -> int:
    try:
        return int(v)
    except ValueError:
        raise PoolingError(f"{flag} takes integers, got {v!r}") from None


def _cmd_shape(args: argparse.Namespace) -> int:
    from .geometry import window_spec

    size = [_to_int("--input-size", v) for v in args.input_size]

    def vec(flag: str, vals: Sequence[str] | None) -> Any:
        if vals is None:
            return None
        ints = [_to_int(flag, v) for v in vals]
        return ints[0] if len(ints) == 1 else ints

    spec = window_spec(
        size,
        vec("--kernel-size", args.kernel_size),
        vec("--stride", args.stride),
        _parse_padding(args.padding),
        vec("--dilation", args.dilation),
        args.ceil_mode,
        op="poolkit shape",
    )
    print(json.dumps(spec.to_dict(), indent=None if args.compact else 2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="poolkit", description="Pooling operators for neural networks.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    p_ops = sub.add_parser("ops", help="list every operator and the backends that implement it")
    p_ops.add_argument("--json", action="store_true", help="machine-readable output")
    p_ops.set_defaults(func=_cmd_ops)
    p_shape = sub.add_parser(
        "shape",
        help="geometry of one pooling call (output size, padding per side) as JSON",
        description="Example: poolkit shape --input-size 112 112 --kernel-size 3 --stride 2 --padding 1",
    )
    p_shape.add_argument("--input-size", nargs="+", required=True, metavar="N", help="spatial size per axis")
    p_shape.add_argument("--kernel-size", "-k", nargs="+", required=True, metavar="K")
    p_shape.add_argument("--stride", "-s", nargs="+", metavar="S", help="default: kernel size")
    p_shape.add_argument(
        "--padding",
        "-p",
        nargs="+",
        default=["0"],
        metavar="P",
        help="int per axis, lo:hi pairs per axis, 'same' or 'valid'",
    )
    p_shape.add_argument("--dilation", "-d", nargs="+", default=["1"], metavar="D")
    p_shape.add_argument("--ceil-mode", action="store_true")
    p_shape.add_argument("--compact", action="store_true", help="one-line JSON")
    p_shape.set_defaults(func=_cmd_shape)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except PoolingError as exc:
        prog = f"poolkit {args.command}"
        msg = " ".join(str(exc).split()).removeprefix(f"{prog}: ")
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
