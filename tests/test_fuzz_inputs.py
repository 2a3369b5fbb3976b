"""Fuzzing every untrusted input of the command line with hypothesis.

Inputs: model descriptions (mutated JSON and raw bytes), image files (mutated bytes, odd modes and
sizes, lying headers), videos (cut at random offsets, bytes flipped), NoScope label CSVs (odd
rows, cells and encodings) and numeric command-line flags. Each case runs ``foldedcnns`` in this
process and asserts:

* the exit code is 0, 1 or 2;
* a failure prints exactly one line on stderr, starting ``foldedcnns: error:`` (Python warnings and
  log records of level WARNING count as lines too), and never a traceback;
* nothing outside the named output (and its ``.partial``) was created, changed or removed, and no
  crash report was written.

The address space is capped a few GB above what the test process holds, so an input that asks
for a huge allocation fails fast (and must still give one line) instead of swapping the machine.
Cases are derandomised, so ``make test`` is reproducible; ``FOLDEDCNNS_FUZZ_EXAMPLES=N`` runs N
random cases per test instead. The whole file runs in well under 2 minutes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import resource
import shutil
import struct
import tempfile
import warnings
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from foldedcnns.cli.main import main

pytestmark = pytest.mark.slow  # about a minute of subprocess runs; make test runs it

EXAMPLES = int(os.environ.get("FOLDEDCNNS_FUZZ_EXAMPLES", "0"))
HEADROOM_BYTES = 6 * 2**30  # address space allowed above the test process's own


def fuzz(examples: int) -> settings:
    return settings(max_examples=EXAMPLES or examples, deadline=None, derandomize=not EXAMPLES,
                    database=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                          HealthCheck.too_slow, HealthCheck.data_too_large])


# -- the harness ---------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` with a digest of its content."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink() or not path.is_file():
            out[rel] = "link" if path.is_symlink() else "folder"
        else:
            out[rel] = hashlib.sha1(path.read_bytes()).hexdigest()
    return out


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname}: {record.getMessage()}")


def run_case(argv: Sequence[object], sandbox: Path, outputs: Sequence[Path] = ()) -> tuple[int, str]:
    """Run ``foldedcnns ARGV`` and check the contract (module docstring); return (exit code, stderr)."""
    allowed = [str(p.relative_to(sandbox)) for p in outputs]
    allowed += [f"{a}.partial" for a in allowed]
    before = snapshot(sandbox)
    err, records = io.StringIO(), _Records()
    root = logging.getLogger()
    root.addHandler(records)
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(err), \
                contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("always")
            try:
                code = main([str(a) for a in argv])
            except SystemExit as exc:  # argparse
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        root.removeHandler(records)
    text = err.getvalue()
    lines = [line for line in text.splitlines() if line.strip()]
    lines += [f"{w.category.__name__}: {w.message}" for w in caught] + records.lines
    assert code in (0, 1, 2), f"exit {code} for {list(map(str, argv))}: {text}"
    assert "Traceback" not in text, text
    if code != 0:
        assert len(lines) == 1 and lines[0].startswith("foldedcnns: error: "), \
            f"{list(map(str, argv))} -> {code}: {lines}"
    after = snapshot(sandbox)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    stray = sorted(k for k in changed if not any(k == a or k.startswith(a + os.sep) for a in allowed))
    assert not stray, f"{list(map(str, argv))} changed files outside its output: {stray}"
    return code, text


@pytest.fixture(scope="module", autouse=True)
def bounded_memory() -> Iterator[None]:
    """Cap the address space a few GB above what the process holds while the cases run."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if not os.path.exists("/proc/self/status"):  # not Linux: run without the cap
        yield
        return
    with open("/proc/self/status", encoding="ascii") as status:
        held = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    limit = held + HEADROOM_BYTES
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture(autouse=True)
def private_state(tmp_path, monkeypatch) -> Path:
    """Crash reports (there must be none) go to tmp_path/state."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    yield tmp_path / "state"
    assert not (tmp_path / "state").exists(), "a fuzz case wrote a crash report"


@contextlib.contextmanager
def sandbox(parent: Path) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def ckpt(tiny_checkpoint) -> Path:
    return tiny_checkpoint(2)


# -- model descriptions -----------------------------------------------------------------------------------

# Values a field may be replaced by: wrong types, zero, negative, absurd sizes (beyond any bound, so they
# must be refused before anything is allocated), small sizes that build tiny models.
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 40) | st.sampled_from([10**9, 2**63, -(2**31), 10**30, 5000])
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)


@st.composite
def descriptions(draw: st.DrawFn, base: dict) -> bytes:
    """A mutated task description, as the bytes of a file."""
    kind = draw(st.sampled_from(["mutate", "mutate", "mutate", "bytes", "cut", "encoding", "nesting"]))
    desc = json.loads(json.dumps(base))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "nesting":
        depth = draw(st.integers(50, 100_000))
        return b'{"name": "deep", "ClassNames": ' + b"[" * depth + b"]" * depth + b"}"
    for _ in range(draw(st.integers(1, 3))):
        target = desc if draw(st.booleans()) else desc.setdefault("model-architecture", {})
        if not isinstance(target, dict):
            break
        keys = [*target.keys(), draw(st.text(min_size=1, max_size=10))]
        key = draw(st.sampled_from(keys))
        if draw(st.integers(0, 4)) == 0:
            target.pop(key, None)
        else:
            target[key] = draw(JSON_VALUES)
    text = json.dumps(desc, allow_nan=draw(st.booleans()))
    if kind == "cut":
        return text.encode()[:draw(st.integers(0, len(text)))]
    if kind == "encoding":
        return draw(st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe", b"", b"\x00"])) + \
            text.replace('"a"', '"\u00e9\u20ac"').encode(draw(st.sampled_from(["latin-1", "utf-16", "cp1252"])),
                                                          errors="replace")
    return text.encode()


@fuzz(100)
@given(data=st.data())
def test_fuzz_model_descriptions(tmp_path, tiny_task, data):
    blob = data.draw(descriptions(tiny_task.to_dict()))
    with sandbox(tmp_path) as box:
        path = box / "task.json"
        path.write_bytes(blob)
        plot = box / "ai.png"
        command = data.draw(st.sampled_from(["flops", "intensity"]))
        if command == "flops":
            run_case(["flops", "--description", path, "--fold", data.draw(st.sampled_from(["1", "2"]))], box)
        else:
            run_case(["intensity", "--description", path, "--folds", "1,2", "--no-compound", "--plot", plot], box,
                     [plot])


# -- image files ----------------------------------------------------------------------------------------

MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F", "CMYK", "YCbCr", "HSV"]
FORMATS = {"png": "PNG", "jpg": "JPEG", "bmp": "BMP", "gif": "GIF", "tif": "TIFF", "webp": "WEBP", "ppm": "PPM"}


def _png_with_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims ``width`` x ``height`` (with a valid CRC): a decompression-bomb header."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


@st.composite
def image_bytes(draw: st.DrawFn) -> tuple[str, bytes]:
    """(file suffix, bytes): an image of an odd mode and size, maybe with mutated bytes or a lying header."""
    suffix = draw(st.sampled_from(sorted(FORMATS)))
    if draw(st.integers(0, 9)) == 0:
        return "png", _png_with_size(draw(st.sampled_from([0, 1, 2**16, 2**31 - 1, 2**32 - 1])),
                                     draw(st.sampled_from([1, 50_000, 2**31 - 1])))
    mode = draw(st.sampled_from(MODES))
    size = (draw(st.sampled_from([1, 2, 7, 20, 63, 300])), draw(st.sampled_from([1, 3, 16, 33, 200])))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    try:
        image = image.convert(mode)
        buffer = io.BytesIO()
        image.save(buffer, FORMATS[suffix])
        data = bytearray(buffer.getvalue())
    except (OSError, ValueError, KeyError):  # this format cannot hold this mode: plain bytes instead
        data = bytearray(draw(st.binary(min_size=1, max_size=64)))
    action = draw(st.sampled_from(["keep", "flip", "cut", "junk"]))
    if action == "flip" and data:
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    elif action == "cut":
        data = data[:draw(st.integers(0, len(data)))]
    elif action == "junk":
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=32))
    return suffix, bytes(data)


@fuzz(80)
@given(files=st.lists(image_bytes(), min_size=1, max_size=3), data=st.data())
def test_fuzz_image_files(tmp_path, ckpt, files, data):
    with sandbox(tmp_path) as box:
        folder = box / "imgs"
        folder.mkdir()
        for i, (suffix, blob) in enumerate(files):
            (folder / f"{i}.{suffix}").write_bytes(blob)
        out = box / "p.csv"
        profile = data.draw(st.sampled_from(["0"] * 7 + ["4"]))  # 4: decode them again (and 0.5 s of model)
        run_case(["predict", ckpt, folder, "--out", out, "--no-progress", "--profile-frames", profile,
                  "--batch-size", "2"], box, [out])


# -- videos ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def video_bytes(tiny_video) -> bytes:
    return tiny_video(count=12).read_bytes()


@fuzz(80)
@given(data=st.data())
def test_fuzz_truncated_and_damaged_videos(tmp_path, ckpt, video_bytes, data):
    blob = bytearray(video_bytes[:data.draw(st.integers(0, len(video_bytes)))])
    if blob and data.draw(st.booleans()):
        for _ in range(data.draw(st.integers(1, 6))):
            blob[data.draw(st.integers(0, len(blob) - 1))] ^= data.draw(st.integers(1, 255))
    with sandbox(tmp_path) as box:
        video = box / "clip.mp4"
        video.write_bytes(bytes(blob))
        if data.draw(st.booleans()):
            out = box / "p.csv"
            run_case(["predict", ckpt, video, "--out", out, "--no-progress", "--profile-frames", "0",
                      "--batch-size", "4"], box, [out])
        else:
            out = box / "frames"
            run_case(["data", "noscope-frames", video, out, "--size", "8", "--no-progress"], box, [out])


# -- NoScope label CSVs ----------------------------------------------------------------------------------

CELLS = (st.integers(-5, 45).map(str) | st.sampled_from(["", "1e15", "nan", "inf", "-0", "3.7", "1,2", '"7"', "0x10",
                                                          "\u0663", "9" * 40, "\x00", " 4 "])
         | st.text(max_size=6))
OBJECTS = st.sampled_from(["person", "car", "", "person ", '"person"', "pers\non", "\u00e9"]) | st.text(max_size=8)


@st.composite
def label_csvs(draw: st.DrawFn) -> bytes:
    header = draw(st.sampled_from(["frame,object_name", "object_name,frame", "frame,object_name,confidence",
                                   "frame", "Frame,Object_Name", "", "frame;object_name"]))
    rows = draw(st.lists(st.tuples(CELLS, OBJECTS), max_size=12))
    lines = [header] + [f"{f},{o}" if draw(st.integers(0, 5)) else f'{f},"{o}' for f, o in rows]
    text = "\n".join(lines) + draw(st.sampled_from(["\n", "", "\r\n"]))
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "latin-1", "utf-16"]))
    blob = text.encode(encoding, errors="replace")
    return blob[:draw(st.integers(0, len(blob)))] if draw(st.integers(0, 4)) == 0 else blob


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("frames")
    for i in range(48):
        Image.new("RGB", (4, 4), (i, 0, 0)).save(folder / f"{i}.png")
    return folder


@fuzz(100)
@given(blob=label_csvs(), fraction=st.sampled_from(["1/8", "1/3", "1/4"]))
def test_fuzz_label_csvs(tmp_path, frames_dir, blob, fraction):
    before = snapshot(frames_dir)
    with sandbox(tmp_path) as box:
        labels = box / "labels.csv"
        labels.write_bytes(blob)
        out = box / "split"
        run_case(["data", "noscope-split", "custom", out, "--object", "person", "--labels", labels, "--frames",
                  frames_dir, "--fraction", fraction, "--copy", "--no-progress"], box, [out])
    assert snapshot(frames_dir) == before


# -- numeric flags -----------------------------------------------------------------------------------------

NUMBERS = (st.integers(-3, 12).map(str)
           | st.sampled_from(["0", "-1", "1e9", "10000000000000000000000", "nan", "inf", "-inf", "1.5", "", " 2",
                              "0x10", "1_000", "\u0663", "2**4", "1e-300", "-0", "4096", "4097", "99999999"])
           | st.floats(allow_nan=True, allow_infinity=True).map(repr))
CROPS = st.lists(NUMBERS, min_size=0, max_size=5).map(",".join)

# (argv template, the flag fuzzed, values); OUT and the named inputs are filled in per case. Only flags
# whose every value ends quickly: counts of work (per-class, iterations, seconds) are fuzzed only for
# their invalid values.
FLAG_CASES = {
    "flops --fold": (["flops", "lol/goldnumber-fraction", "--fold"], NUMBERS),
    "flops --multiplier": (["flops", "lol/goldnumber-fraction", "--fold", "2", "--multiplier"], NUMBERS),
    "intensity --batch-size": (["intensity", "lol/goldnumber-fraction", "--batch-size"], NUMBERS),
    "intensity --bytes-per-element": (["intensity", "lol/goldnumber-fraction", "--bytes-per-element"], NUMBERS),
    "intensity --folds": (["intensity", "lol/goldnumber-fraction", "--folds"], CROPS),
    "predict --batch-size": (["predict", "CKPT", "IMGS", "--out", "OUT.csv", "--no-progress", "--batch-size"],
                             NUMBERS),
    "predict --threads": (["predict", "CKPT", "IMGS", "--out", "OUT.csv", "--no-progress", "--threads"], NUMBERS),
    "predict --profile-frames": (["predict", "CKPT", "IMGS", "--out", "OUT.csv", "--no-progress",
                                  "--profile-frames"], NUMBERS),
    "predict --crop": (["predict", "CKPT", "VIDEO", "--out", "OUT.csv", "--no-progress", "--profile-frames", "0",
                        "--crop"], CROPS),
    "noscope-frames --size": (["data", "noscope-frames", "VIDEO", "OUT", "--no-progress", "--size"], NUMBERS),
    "noscope-frames --start": (["data", "noscope-frames", "VIDEO", "OUT", "--no-progress", "--size", "4",
                                "--start"], NUMBERS),
    "noscope-frames --end": (["data", "noscope-frames", "VIDEO", "OUT", "--no-progress", "--size", "4", "--end"],
                             NUMBERS),
    "noscope-frames --crop": (["data", "noscope-frames", "VIDEO", "OUT", "--no-progress", "--size", "4", "--crop"],
                              CROPS),
    "synth --seed": (["data", "synth", "TASK", "OUT", "--per-class", "3", "--workers", "1", "--no-progress",
                      "--seed"], NUMBERS),
    "synth --workers": (["data", "synth", "TASK", "OUT", "--per-class", "3", "--no-progress", "--workers"],
                        NUMBERS),
    "synth --per-class (invalid)": (["data", "synth", "TASK", "OUT", "--workers", "1", "--no-progress",
                                     "--per-class"], st.sampled_from(["0", "-1", "2", "nan", "", "1e9x"])),
    "evaluate --batch-size": (["evaluate", "CKPT", "--data", "DATA", "--device", "cpu", "--batch-size"], NUMBERS),
    "bench --batch-sizes": (["bench", "--tasks", "CKPT", "--folds", "1", "--backends", "eager", "--iterations", "1",
                             "--warmup", "0", "--trials", "1", "--peak-seconds", "0", "--out", "OUT.csv", "--json",
                             "--batch-sizes"], CROPS),
    "bench --seconds (invalid)": (["bench", "--tasks", "CKPT", "--folds", "1", "--backends", "eager", "--trials",
                                   "1", "--peak-seconds", "0", "--out", "OUT.csv", "--json", "--batch-sizes", "2",
                                   "--seconds"], st.sampled_from(["0", "-1", "nan", "inf", "-inf", "", "x"])),
    "bench --trials": (["bench", "--tasks", "CKPT", "--folds", "1", "--backends", "eager", "--iterations", "1",
                        "--warmup", "0", "--peak-seconds", "0", "--out", "OUT.csv", "--json", "--batch-sizes", "2",
                        "--trials"], st.sampled_from(["0", "-1", "1", "nan", "", "1e3"])),
    "bench --peak-seconds (invalid)": (["bench", "--tasks", "CKPT", "--folds", "1", "--backends", "eager",
                                        "--iterations", "1", "--out", "OUT.csv", "--json", "--batch-sizes", "2",
                                        "--peak-seconds"], st.sampled_from(["-1", "nan", "inf", "", "x"])),
    "peak --threads (invalid)": (["peak", "--seconds", "0.001", "--threads"],
                                 st.sampled_from(["0", "-1", "10000000", "nan", "", "1.5"])),
}


@pytest.fixture(scope="module")
def flag_inputs(tmp_path_factory, tiny_checkpoint, tiny_task, tiny_video) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("flag-inputs")
    rng = np.random.default_rng(0)
    for split in ("test",):
        for name in tiny_task.class_names:
            (root / "data" / split / name).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (tiny_task.height, tiny_task.width, 3), dtype=np.uint8)).save(
                root / "data" / split / name / "0.png")
    (root / "imgs").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (tiny_task.height, tiny_task.width, 3), dtype=np.uint8)).save(
            root / "imgs" / f"{i}.png")
    (root / "task.json").write_text(json.dumps(tiny_task.to_dict()))
    return {"CKPT": tiny_checkpoint(2), "IMGS": root / "imgs", "DATA": root / "data", "TASK": root / "task.json",
            "VIDEO": tiny_video(count=6)}


@fuzz(6)
@pytest.mark.parametrize("case", sorted(FLAG_CASES))
@given(data=st.data())
def test_fuzz_numeric_flags(tmp_path, flag_inputs, case, data):
    template, values = FLAG_CASES[case]
    value = data.draw(values)
    with sandbox(tmp_path) as box:
        outputs = {"OUT": box / "out", "OUT.csv": box / "out.csv"}
        argv = [str(flag_inputs.get(a, outputs.get(a, a))) for a in template]
        # "--flag=value" so that a value starting with '-' is a value, not another option
        argv[-1] = f"{argv[-1]}={value}"
        run_case(argv, box, list(outputs.values()))
