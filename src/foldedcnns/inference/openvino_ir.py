"""OpenVINO IR files (``NAME.xml`` + ``NAME.bin``): written by ``foldedcnns export --format openvino``, run by
``Predictor("NAME.xml")``. The :class:`ModelConfig` and the precision travel in the IR's ``rt_info``.

The runtime's ``openvino`` backend converts models in memory; this module owns the file format.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from foldedcnns.errors import ConfigError, DataError, first_line
from foldedcnns.models.registry import ModelConfig
from foldedcnns.runtime.backends.base import Prepared, Runner, finish, partial_shapes
from foldedcnns.runtime.backends.openvino import compile_openvino, openvino_runner, ov_core
from foldedcnns.runtime.engine import Engine

IR_SUFFIX = ".xml"
RT_CONFIG = ["foldedcnns", "model_config"]  # rt_info path of the ModelConfig JSON
RT_PRECISION = ["foldedcnns", "precision"]


def is_ir_path(path: Any) -> bool:
    """Whether ``path`` names an OpenVINO IR (``.xml``) rather than a checkpoint."""
    return isinstance(path, (str, Path)) and Path(path).suffix == IR_SUFFIX


def write_ir(ov_model: Any, xml: str | Path, config: ModelConfig, precision: str) -> Path:
    """Write ``ov_model`` with its config and precision in ``rt_info`` to ``xml`` and the ``.bin`` beside it
    (not atomically: see :func:`foldedcnns.inference.export_openvino.export_openvino`). fp16 stores the
    weights in fp16; the others keep them as they are."""
    import openvino as ov  # optional dependency

    xml = Path(xml)
    if xml.suffix != IR_SUFFIX:
        raise ConfigError(f"an OpenVINO IR is an .xml file (its weights go to the .bin beside it), got {xml}")
    ov_model.set_rt_info(json.dumps(config.to_dict()), RT_CONFIG)
    ov_model.set_rt_info(precision, RT_PRECISION)
    ov.save_model(ov_model, str(xml), compress_to_fp16=precision == "fp16")
    return xml


def read_ir(xml: str | Path) -> tuple[Any, ModelConfig, str]:
    """(``ov.Model``, its :class:`ModelConfig`, its precision) of an IR written by :func:`write_ir`."""
    xml = Path(xml)
    if not xml.is_file() or not xml.with_suffix(".bin").is_file():
        raise DataError(f"OpenVINO IR {xml} (with {xml.with_suffix('.bin').name} beside it) does not exist; "
                        "write one with 'foldedcnns export CKPT --format openvino --out FILE.xml'")
    try:
        ov_model = ov_core().read_model(str(xml))
    except RuntimeError as exc:
        raise DataError(f"cannot read OpenVINO IR {xml}: {first_line(exc)}") from exc
    if not ov_model.has_rt_info(RT_CONFIG):
        raise ConfigError(f"{xml} has no foldedcnns metadata; export it with 'foldedcnns export --format openvino'")
    config = ModelConfig.from_dict(json.loads(ov_model.get_rt_info(RT_CONFIG).astype(str)))
    precision = ov_model.get_rt_info(RT_PRECISION).astype(str) if ov_model.has_rt_info(RT_PRECISION) else "fp32"
    return ov_model, config, precision


def prepare_ov_model(ov_model: Any, config: ModelConfig, engine: Engine, folded_inputs: int, *,
                     partial_batches: bool = False) -> Prepared:
    """A static-shape :class:`Prepared` runner of a converted (or read) ``ov_model`` on ``engine`` (an
    ``openvino`` engine at the IR's precision) for calls of ``folded_inputs`` inputs (``partial_batches``:
    also for the smaller :func:`~foldedcnns.runtime.backends.base.partial_shapes`); ``ov_model`` is not
    changed."""
    ok, reason = engine.is_available()
    if not ok:
        raise ConfigError(f"cannot run this OpenVINO IR ({engine.precision}) here: {reason}")
    started = time.perf_counter()

    def runner(inputs: int) -> Runner:
        static = ov_model.clone()
        static.reshape([inputs, *config.input_shape])
        return openvino_runner(compile_openvino(static, engine.precision, threads=engine.threads))

    example = torch.rand(folded_inputs, *config.input_shape, generator=torch.Generator().manual_seed(0))
    smaller = {size: runner(size) for size in partial_shapes(folded_inputs)} if partial_batches else {}
    return finish(engine, runner(folded_inputs), example, fold=config.fold, static=True, started=started,
                  smaller=smaller)

