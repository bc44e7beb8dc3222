"""``jetsearch model show|count|export``: one network's structure, counts and ONNX file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jetsearch.cli import EXIT_OK, console, load_network_config, parse_size


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def _fmt_g(n: float) -> str:
    return f"{n / 1e9:.3f} G" if n >= 1e9 else f"{n / 1e6:.1f} M"


def cmd_model(args: argparse.Namespace) -> int:
    """Print the per-stage table (and per-layer with ``--layers``) and, for a derived preset,
    where it came from (its provenance block); or export ONNX."""
    import rich.table

    from jetseg.complexity import profile
    from jetseg.config import arch_hash
    from jetseg.model import build_model

    config = load_network_config(args.config)
    model = build_model(config)
    out = console()
    if args.action == "export":
        return _export(args, config, model, out)
    report = profile(model, args.size)
    h, w = args.size
    provenance, source = _provenance(args.config)
    out.print(
        f"[bold]{config.name}[/bold]  arch_hash {arch_hash(config)}  input {h}x{w}  "
        f"classes {config.num_classes}"
        + ("  [italic](derived preset)[/italic]" if provenance else "")
    )
    table = rich.table.Table(title="per stage", title_justify="left")
    for col in (
        "stage",
        "blocks",
        "width",
        "stride",
        "expansion",
        "attention",
        "act",
        "params",
        "MACs",
    ):
        table.add_column(
            col, justify="right" if col not in ("stage", "attention", "act") else "left"
        )
    info = model.encoder.feature_info
    stem = config.stem
    totals = report.by_prefix("encoder.stem")
    table.add_row(
        "S0 stem",
        "1",
        str(stem.width),
        str(info[0].stride),
        "-",
        stem.kind,
        stem.activation,
        _fmt_int(totals["params"]),
        _fmt_g(totals["macs"]),
    )
    for i, sc in enumerate(config.stages):
        t = report.by_prefix(f"encoder.stages.{i}")
        table.add_row(
            f"S{i + 1}",
            str(sc.depth),
            str(sc.width),
            str(info[i + 1].stride),
            str(sc.expansion),
            sc.attention,
            sc.activation,
            _fmt_int(t["params"]),
            _fmt_g(t["macs"]),
        )
    t = report.by_prefix("decoder")
    dec = config.decoder
    table.add_row(
        "decoder",
        "-",
        f"{dec.low_width}/{dec.head_width}",
        "4",
        "-",
        f"taps {list(dec.taps)}",
        dec.activation,
        _fmt_int(t["params"]),
        _fmt_g(t["macs"]),
    )
    table.add_row(
        "[bold]total",
        "",
        "",
        "",
        "",
        "",
        "",
        f"[bold]{_fmt_int(report.params)}",
        f"[bold]{_fmt_g(report.macs)}",
    )
    out.print(table)
    out.print(
        f"params {_fmt_int(report.params)} | MACs {_fmt_g(report.macs)} | "
        f"paper FLOPs (eq. 2) {_fmt_g(report.flops)} | activation traffic "
        f"{report.act_bytes / 1e6:.1f} MB | eager kernels {report.kernels}"
    )
    if args.layers:
        lt = rich.table.Table(title="per layer", title_justify="left")
        for col in ("layer", "type", "output", "params", "MACs", "FLOPs", "MB moved", "kernels"):
            lt.add_column(col, justify="left" if col in ("layer", "type", "output") else "right")
        for row in report.layers:
            lt.add_row(
                row.name or "(model)",
                row.kind,
                "x".join(map(str, row.out_shape)),
                _fmt_int(row.params),
                _fmt_int(row.macs),
                _fmt_int(row.flops),
                f"{row.act_bytes / 1e6:.2f}",
                str(row.kernels),
            )
        out.print(lt)
    _print_provenance(out, provenance, source)
    if args.json:
        from jetseg.fileio import atomic_write_text

        payload = {"name": config.name, "arch_hash": arch_hash(config), **report.to_dict()}
        if provenance:
            payload["provenance"] = provenance
        atomic_write_text(args.json, json.dumps(payload, indent=2) + "\n")
    return EXIT_OK


def _provenance(name_or_path: str) -> tuple[dict | str | None, str]:
    """A derived preset's provenance block (None for a config without one; the problem as a
    string when the block is there but unreadable) and the file it came from."""
    from jetseg.config import ConfigError, config_file, read_provenance

    path = config_file(name_or_path)
    try:
        return read_provenance(path), str(path)
    except (ConfigError, OSError) as err:
        return str(err), str(path)


def _print_provenance(out, provenance: dict | str | None, source: str) -> None:
    """The provenance block as its file holds it (YAML), under a heading naming the file."""
    import yaml

    if provenance is None:
        return
    if isinstance(provenance, str):
        out.print(f"[yellow]provenance block unreadable:[/yellow] {provenance}", highlight=False)
        return
    text = yaml.safe_dump(provenance, sort_keys=False, default_flow_style=None, width=96)
    out.print(f"[bold]provenance[/bold] ({source}):", highlight=False)
    out.print("\n".join(f"  {line}" for line in text.splitlines()), highlight=False, markup=False)


def _export(args: argparse.Namespace, config, model, out) -> int:
    from jetseg.export import check_parity, export_onnx

    path = Path(args.output or f"{config.name}.onnx")
    data = export_onnx(model, path, input_size=args.size, opset=args.opset)
    size_kb = len(data) / 1e3
    out.print(f"wrote {path} ({size_kb:.0f} kB, opset {args.opset}, dynamic batch/H/W)")
    if not args.no_check:
        h, w = args.size
        diffs = check_parity(model, data, sizes=[(h, w), (h - 1 + h % 2, w - 1 + w % 2)])
        worst = max(diffs.values())
        out.print(f"onnxruntime parity: max |diff| {worst:.1e} at {len(diffs)} sizes")
    return EXIT_OK


def add_parsers(subparsers) -> None:
    """Register ``model``."""
    p = subparsers.add_parser(
        "model",
        help="summarise, count or export one JetSeg network",
        description="Summarise, count or export one JetSeg network.",
        epilog="examples:\n  jetsearch model show nano --size 360x480\n"
        "  jetsearch model count agx --size 512x512 --layers\n"
        "  jetsearch model export nano -o nano.onnx",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=("show", "count", "export"))
    p.add_argument(
        "config",
        help="preset name (nano, agx, workstation, a derived preset) or a config YAML path",
    )
    p.add_argument(
        "--size", type=parse_size, default=(360, 480), help="input HxW (default 360x480)"
    )
    p.add_argument("--layers", action="store_true", help="also print the per-layer table")
    p.add_argument("--json", metavar="FILE", help="also write the counts as JSON")
    p.add_argument("-o", "--output", metavar="FILE", help="export: ONNX file (default NAME.onnx)")
    p.add_argument("--opset", type=int, default=17, help="export: ONNX opset (17 or newer)")
    p.add_argument(
        "--no-check", action="store_true", help="export: skip the onnxruntime parity check"
    )
    p.set_defaults(func=cmd_model)
