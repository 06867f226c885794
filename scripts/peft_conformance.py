#!/usr/bin/env python
"""PEFT conformance: run peft's own generic tuner tests against PRoLoRA (issue 16; docs/peft-conformance.md).

Steps (nothing here runs in the default test suite):

1. fetch peft's source package for the installed (pinned) version with ``pip download --no-deps
   --no-binary :all: peft==X`` into the cache directory, and extract its ``tests/`` folder as the package
   ``peft_tests``;
2. replace the case lists of ``test_custom_models.py``, ``test_decoder_models.py`` and ``test_config.py`` by
   the PRoLoRA cases of ``scripts/prolora_peft_cases.py`` (one inserted line per list) and install
   ``scripts/peft_conformance_harness.py`` as the run's ``conftest.py``;
3. run pytest on them (only items parametrized with a PRoLoRA case), and print passed / failed / skipped,
   each failure with its class from ``CLASSIFIED`` below: ``defect`` (ours to fix), ``lora-only`` (a LoRA
   feature PRoLoRA does not claim) or ``harness`` (a difference of this harness, not of PRoLoRA). A failure
   not in the table is reported as ``unclassified`` and counts as a defect.

Usage::

    PYTHONPATH=src python scripts/peft_conformance.py                 # all three modules
    PYTHONPATH=src python scripts/peft_conformance.py --subset quick  # custom models + config only
    PYTHONPATH=src python scripts/peft_conformance.py --order reverse # or random:SEED
    PYTHONPATH=src python scripts/peft_conformance.py -- -k merge     # extra pytest arguments

Exit status: 0 when no failure is a defect or unclassified, 1 otherwise, 2 when the tests cannot be fetched.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

MODULES = {
    "custom": "test_custom_models.py",
    "decoder": "test_decoder_models.py",
    "config": "test_config.py",
}
SUBSETS = {"full": ["custom", "decoder", "config"], "quick": ["custom", "config"], "decoder": ["decoder"]}

# Lines inserted into peft's test modules: (file, anchor line prefix, inserted before it).
PATCHES = [
    (
        "test_custom_models.py",
        "def _skip_tests_with_multiple_adapters_with_target_parameters",
        (
            "import prolora_peft_cases as _prolora\n"
            "TEST_CASES = _prolora.CUSTOM_TEST_CASES\n"
            "ALL_PEFT_CONFIG_CLASSES = [_prolora.PRoLoRAConfig]\n"
            "MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES = _prolora.MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES\n\n\n"
        ),
    ),
    (
        "test_custom_models.py",
        "class TestMixedAdapterBatches",
        "MIXED_ADAPTER_TEST_CASES = _prolora.MIXED_ADAPTER_TEST_CASES\n\n\n",
    ),
    (
        "test_decoder_models.py",
        "def _skip_if_not_conv1d_supported",
        (
            "import prolora_peft_cases as _prolora\n"
            "PEFT_DECODER_MODELS_TO_TEST = _prolora.DECODER_MODELS\n"
            "SMALL_GRID_MODELS = _prolora.DECODER_MODELS\n"
            "ALL_CONFIGS = _prolora.DECODER_CONFIGS\n\n\n"
        ),
    ),
    (
        "test_config.py",
        "# Config classes that support selecting layers by index",
        ("import prolora_peft_cases as _prolora\nALL_CONFIG_CLASSES = _prolora.CONFIG_CLASSES\n\n"),
    ),
]

# Remaining failures, classified: (test-id regex, message regex, class, reason).
# Classes: "defect" (ours to fix), "lora-only" (a LoRA feature PRoLoRA does not claim), "harness" (this harness).
CLASSIFIED: list[tuple[str, str, str, str]] = [
    (
        r"test_training_decoders_layer_indexing",
        r"layers_to_transform cannot be used when target_modules is a str",
        "harness",
        (
            "peft's test adds layers_to_transform to our all-linear case; LoRA rejects this combination with "
            "the same ValueError (peft's own case list has no str target_modules for this test)"
        ),
    ),
    (
        r"test_config.*(test_from_pretrained(_cache_dir)?|test_save_pretrained_with_runtime_config)\[",
        r"Can't find 'adapter_config.json' at 'peft-internal-testing",
        "harness",
        "the test downloads a LoRA adapter from the Hub; this harness runs offline",
    ),
]


def classify(nodeid: str, message: str = "") -> tuple[str, str]:
    for pattern, message_pattern, kind, reason in CLASSIFIED:
        if re.search(pattern, nodeid) and re.search(message_pattern, message):
            return kind, reason
    return "unclassified", "not in the table: treat as a defect"


def _test_function(nodeid: str) -> str:
    return nodeid.split("::")[-1].split("[")[0]


def fetch_tests(version: str, cache: Path) -> Path:
    """``cache/peft-<version>/tests`` from the sdist on PyPI (downloaded once)."""
    root = cache / f"peft-{version}"
    if (root / "tests" / "testing_common.py").exists():
        return root / "tests"
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / f"peft-{version}.tar.gz"
    if not sdist.exists():
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"peft=={version}",
            "-d",
            str(cache),
        ]
        if subprocess.run(cmd, check=False).returncode != 0 or not sdist.exists():
            raise SystemExit(
                f"could not download peft=={version}'s source package from PyPI (command: "
                f"{' '.join(cmd)}); check the network or put the sdist at {sdist}."
            )
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(f"peft-{version}/tests/") and m.isfile()]
        if not members:
            raise SystemExit(f"{sdist} has no tests/ folder; this script needs peft's test suite.")
        try:
            tar.extractall(cache, members=members, filter="data")
        except (
            TypeError
        ):  # Python without tarfile extraction filters (< 3.10.12 / 3.11.4): members checked here
            if any(m.name.startswith("/") or ".." in Path(m.name).parts for m in members):
                raise SystemExit(f"{sdist} has unsafe member paths; refusing to extract.") from None
            tar.extractall(cache, members=members)
    return root / "tests"


def prepare(tests: Path, work: Path) -> Path:
    """A fresh run directory: ``work/peft_tests`` (patched copy), ``conftest.py``, the PRoLoRA cases."""
    if work.exists():
        shutil.rmtree(work / "peft_tests", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    pkg = work / "peft_tests"
    shutil.copytree(tests, pkg)
    (pkg / "__init__.py").write_text("")
    for name, anchor, text in PATCHES:
        path = pkg / name
        source = path.read_text()
        index = source.find("\n" + anchor)
        if index < 0:
            raise SystemExit(
                f"{name}: anchor {anchor!r} not found; the harness needs updating for this peft."
            )
        path.write_text(source[: index + 1] + text + source[index + 1 :])
    shutil.copy(HERE / "peft_conformance_harness.py", work / "conftest.py")
    shutil.copy(HERE / "prolora_peft_cases.py", work / "prolora_peft_cases.py")
    (work / "pytest.ini").write_text(
        "[pytest]\naddopts = -p no:cacheprovider\nfilterwarnings =\n    ignore\n"
    )
    return pkg


def run(work: Path, modules: list[str], order: str, extra: list[str], report: Path, src: Path) -> int:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(src), str(work), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PROLORA_CONFORMANCE_MODELS"] = str(work.parent / "models")
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-rN",
        "--tb=line",
        f"--junitxml={report}",
        f"--prolora-order={order}",
        *[f"peft_tests/{MODULES[m]}" for m in modules],
        *extra,
    ]
    print("running:", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=work, env=env, check=False).returncode


def summarise(report: Path) -> dict:
    tree = ET.parse(report)
    results = {"passed": [], "failed": [], "skipped": []}
    for case in tree.iter("testcase"):
        nodeid = f"{case.get('classname')}::{case.get('name')}"
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        skipped = case.find("skipped")
        if failure is not None:
            results["failed"].append((nodeid, (failure.get("message") or "")[:300]))
        elif skipped is not None:
            results["skipped"].append((nodeid, (skipped.get("message") or "")[:300]))
        else:
            results["passed"].append((nodeid, ""))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subset", choices=sorted(SUBSETS), default="full")
    parser.add_argument("--order", default="default", help="default | reverse | random:SEED")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "prolora-peft-conformance",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--src",
        type=Path,
        default=REPO / "src",
        help="prolora sources to test (default: this checkout's src/; e.g. an older commit's "
        "src/ extracted with git archive, for before/after counts)",
    )
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)

    import peft

    tests = fetch_tests(peft.__version__, args.cache_dir)
    work = args.cache_dir / "run"
    prepare(tests, work)
    report = work / "report.xml"
    report.unlink(missing_ok=True)
    run(work, SUBSETS[args.subset], args.order, args.pytest_args, report, args.src.resolve())
    if not report.exists():
        print("pytest wrote no report (collection error?)")
        return 1
    results = summarise(report)
    counts = {key: len(value) for key, value in results.items()}
    print(
        f"\npeft {peft.__version__} generic tests on PRoLoRA ({args.subset}, order {args.order}): "
        f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
    )
    kinds = Counter()
    groups = Counter(
        (_test_function(nodeid), message.splitlines()[0][:120] if message else "")
        for nodeid, message in results["failed"]
    )
    for (function, message), n in groups.most_common():
        print(f"  failures x{n}: {function}: {message}")
    for title, key in (("FAILED", "failed"), ("SKIPPED", "skipped")):
        rows = [(nodeid, message, *classify(nodeid, message)) for nodeid, message in results[key]]
        if key == "skipped":  # skips: group by reason
            for message, n in Counter(message for _, message, _, _ in rows).most_common():
                print(f"  {title} x{n}: {message}")
            continue
        for nodeid, message, kind, reason in rows:
            kinds[kind] += 1
            print(f"  {title} [{kind}] {nodeid}\n      {message}\n      -> {reason}")
    print("failure classes:", dict(kinds) or "none")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "peft": peft.__version__,
                    "subset": args.subset,
                    "order": args.order,
                    "counts": counts,
                    "classes": dict(kinds),
                    "results": results,
                },
                indent=1,
            )
        )
    return 1 if kinds["defect"] or kinds["unclassified"] else 0


if __name__ == "__main__":
    sys.exit(main())
