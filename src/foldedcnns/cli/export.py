"""``foldedcnns export``: write a checkpoint's model as ONNX and check it against PyTorch."""

from __future__ import annotations

import argparse

from foldedcnns.cli.common import add_json_option, print_json
from foldedcnns.errors import ConfigError
from foldedcnns.inference.export import CHECK_TOLERANCE, FORMATS, OPENVINO_PRECISIONS, ExportReport, export_onnx
from foldedcnns.inference.export_openvino import export_openvino
from foldedcnns.runtime.backends import ONNX_OPSET
from foldedcnns.runtime.engine import DEFAULT_PRECISION, Engine


def _shape(dims: tuple[int, ...]) -> str:
    return "x".join("batch" if d < 0 else str(d) for d in dims)


def run_openvino(args: argparse.Namespace) -> int:
    report = export_openvino(args.checkpoint, args.out, engine=Engine("openvino", args.precision, "cpu"),
                             data=args.data, check=not args.no_check, tolerance=args.tolerance,
                             overwrite=args.overwrite)
    if args.json:
        print_json(report.to_dict())
        return 0
    print(f"wrote {report.path} and its .bin ({report.size_bytes / 1e6:.2f} MB, OpenVINO IR {report.precision}, "
          f"{report.export_seconds:.1f} s): {report.task} fold {report.fold}, "
          f"input {_shape(report.input_shape)} -> logits {_shape(report.output_shape)}")
    if report.calibration is not None:
        print(f"int8 calibrated on {report.calibration}")
    _print_check(report, "OpenVINO")
    return 0


def _print_check(report: ExportReport, engine: str) -> None:
    if report.max_abs_diff is None:
        return
    agreement = f", top-1 agreement {100 * report.agreement:.2f}%" if report.agreement is not None else ""
    print(f"{engine} vs PyTorch on random input (folded batches {', '.join(map(str, report.check_batches))}): "
          f"max abs diff {report.max_abs_diff:.3g}{agreement}")


def run(args: argparse.Namespace) -> int:
    if args.format == "openvino":
        return run_openvino(args)
    if args.precision != DEFAULT_PRECISION or args.data is not None:
        raise ConfigError("--precision and --data apply to --format openvino; an ONNX export is fp32")
    report = export_onnx(args.checkpoint, args.out, opset=args.opset, check=not args.no_check,
                         tolerance=args.tolerance, overwrite=args.overwrite)
    if args.json:
        print_json(report.to_dict())
        return 0
    print(f"wrote {report.path} ({report.size_bytes / 1e6:.2f} MB, opset {report.opset}, "
          f"{report.export_seconds:.1f} s): {report.task} fold {report.fold}, "
          f"input {_shape(report.input_shape)} -> logits {_shape(report.output_shape)}")
    _print_check(report, "ONNX Runtime")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("export", help="export a checkpoint's model to ONNX, checked with ONNX Runtime",
                            description="Export the folded model of CKPT (input: batch x f*C x H x W, dynamic batch; "
                                        "output: batch x f*K logits) and compare ONNX Runtime with PyTorch on "
                                        "random input.")
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint written by 'foldedcnns train'")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="export format (default: onnx)")
    parser.add_argument("--out", required=True, help="output file, e.g. model.onnx (openvino: model.xml, the "
                                                     "weights go to model.bin beside it)")
    parser.add_argument("--precision", choices=OPENVINO_PRECISIONS, default=DEFAULT_PRECISION,
                        help="openvino: fp32, fp16 (fp16 weights) or int8 (NNCF, calibrated on --data; "
                             f"default {DEFAULT_PRECISION})")
    parser.add_argument("--data", metavar="DIR", help="openvino int8: data set whose DIR/train (else DIR/val) "
                                                      "images calibrate the quantization")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out (only by a file that passed the check)")
    parser.add_argument("--opset", type=int, default=ONNX_OPSET, help=f"ONNX opset (default: {ONNX_OPSET})")
    parser.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime comparison")
    parser.add_argument("--tolerance", type=float, default=CHECK_TOLERANCE,
                        help=f"largest accepted max abs diff (default {CHECK_TOLERANCE:g})")
    add_json_option(parser)
    parser.set_defaults(func=run)
