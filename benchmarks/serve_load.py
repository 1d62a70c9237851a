"""Throughput and latency of `modelheist serve` on loopback (issue 3's targets).

Starts the real server (`modelheist serve`, a separate process) on a Fashion-MNIST CNN, once
without defenses, once with the full stack (reverse sigmoid, Gaussian noise, rounding, top-k,
plus a rate limit and a budget that never trigger) and once with the detectors (PRADA and the
maximum-softmax OOD detector), and drives it with closed-loop aiohttp
clients: each of C concurrent clients sends its next request as soon as the previous answer
arrives. Reports requests/s, images/s and p50/p99 latency; single-image requests at 1, 8 and 32
clients, and 256-image batches.

``--pipelines text`` (issue 14's target: p99 <= 100 ms at 8 clients for single sentences)
serves the text models instead, without defenses: the fortune-topic MiniLM classifier
(``--text-victim DIR``, or one trained with the text recipe's defaults, the Thieves tables'
victim), the same served with ``--quantize int8`` (text-minilm-int8), and VADER, each asked one
quotation of the evaluation split per request. Before the servers start, the int8 copy's
accuracy and agreement with the float model on the evaluation split go to
benchmarks/results/text_quantization.jsonl.

Each repetition measures the pipelines one after the other, so that the defended/undefended
ratio is taken within one run; every row goes to benchmarks/results/serve_load.jsonl, from
which docs/benchmarks.md's table is generated (mean ± standard deviation over repetitions).

    python benchmarks/serve_load.py [--victim DIR] [--duration 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import orjson

from modelheist.api import npy
from modelheist.experiments.results import ResultsStore

ROOT = Path(__file__).resolve().parent
MODELHEIST = [sys.executable, "-m", "modelheist.cli"]
FULL_STACK = [
    "--defense",
    "reverse-sigmoid:beta=0.7,gamma=0.4",
    "--defense",
    "noise:sigma=0.02,key_file={key_file}",
    "--defense",
    "round:3",
    "--output",
    "top-k:3",
]


# Issue 10: the detectors in front of an otherwise undefended model (PRADA over every input
# of each client, the maximum-softmax OOD detector with its windowed decision).
DETECTOR_STACK = ["--defense", "prada:delta=0.95", "--defense", "ood-msp:threshold=0.9"]


def run(*args: str) -> str:
    return subprocess.run([*MODELHEIST, *args], check=True, capture_output=True, text=True).stdout


def start_server(victim: Path, state: Path, stack: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [
            *MODELHEIST,
            "serve",
            str(victim),
            "--name",
            "victim",
            "--port",
            "0",
            "--state",
            str(state),
            *stack,
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen = []
    # The server's address is on the first line it writes itself; a library's warning may come
    # before it. An exit (end of stream) or 50 other lines mean it did not start.
    while len(seen) < 50 and (line := proc.stderr.readline()):
        if match := re.search(r"http://[\d.]+:\d+", line):
            return proc, match.group(0)
        seen.append(line)
    proc.kill()
    raise SystemExit(f"server did not start: {''.join(seen)}{proc.stderr.read()}")


async def load(
    url: str,
    key: str,
    bodies: list[bytes],
    clients: int,
    seconds: float,
    warmup: float,
    content_type: str = "application/json",
) -> dict:
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds
    headers = {"Authorization": f"Bearer {key}", "Content-Type": content_type}
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker(offset: int) -> None:
            nonlocal errors
            i = offset
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                async with session.post(url, data=bodies[i % len(bodies)]) as response:
                    await response.read()
                    ok = response.status == 200
                t1 = time.perf_counter()
                if t0 >= measure_from:
                    latencies.append(t1 - t0)
                    errors += not ok
                i += clients

        await asyncio.gather(*(worker(k) for k in range(clients)))
    lat = np.array(latencies)
    return {
        "requests": len(lat),
        "errors": errors,
        "requests_per_s": len(lat) / seconds,
        "p50_ms": float(np.percentile(lat, 50) * 1000),
        "p99_ms": float(np.percentile(lat, 99) * 1000),
    }


def record(
    store: ResultsStore,
    repeat: int,
    stack: str,
    request: str,
    clients: int,
    figures: dict,
    images: int,
) -> dict:
    """Append one measurement to the results store and print it."""
    metrics = {**figures, "images_per_s": figures["requests_per_s"] * images}
    row = store.append(
        {
            "benchmark": "serve_load",
            "repeat": repeat,
            "stack": stack,
            "request": request,
            "clients": clients,
            "metrics": metrics,
        }
    )
    print({k: row[k] for k in ("repeat", "stack", "request", "clients")}, metrics, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--victim", type=Path, help="model folder (default: train a Fashion-MNIST CNN)"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per row")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--batch", type=int, default=256, help="images per batch request")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pipelines", choices=("image", "text"), default="image")
    parser.add_argument("--text-victim", type=Path, help="MiniLM model folder (text pipelines)")
    args = parser.parse_args()
    store = ResultsStore(ROOT / "results" / "serve_load.jsonl")
    store.freeze_environment()

    work = Path(tempfile.mkdtemp(prefix="serve_load_"))
    if args.pipelines == "text":
        text_load(store, work, args)
        return
    victim = args.victim
    if victim is None:
        victim = work / "victim"
        print("training the victim (Fashion-MNIST CNN, 3 epochs)...", flush=True)
        run(
            "train",
            "--dataset",
            "fashion-mnist",
            "--arch",
            "cnn",
            "--epochs",
            "3",
            "--out",
            str(victim),
        )
    from modelheist.data import load_dataset  # noqa: I001

    test = load_dataset("fashion-mnist", seed=0).test.x
    rng = np.random.default_rng(0)
    singles = [
        orjson.dumps({"inputs": test[[i]]}, option=orjson.OPT_SERIALIZE_NUMPY)
        for i in rng.choice(len(test), 256, replace=False)
    ]
    batch_inputs = [test[rng.choice(len(test), args.batch, replace=False)] for _ in range(8)]
    json_batches = [
        orjson.dumps({"inputs": b}, option=orjson.OPT_SERIALIZE_NUMPY) for b in batch_inputs
    ]
    npy_batches = [npy.encode(b) for b in batch_inputs]
    rows = []
    for repeat, (stack_name, stack) in itertools.product(
        range(args.repeats), (("none", []), ("full", FULL_STACK), ("detectors", DETECTOR_STACK))
    ):
        state = work / f"state-{stack_name}-{repeat}"
        extra = ["--budget", str(10**12), "--rate", "1000000"] if stack_name == "full" else []
        key = run("keys", "add", "bench", "--state", str(state), *extra).strip()
        key_file = work / "noise.key"
        if not key_file.exists():
            run("keys", "secret", str(key_file))
        proc, base = start_server(victim, state, [a.format(key_file=key_file) for a in stack])
        url = f"{base}/v1/models/victim/predict"
        try:
            for clients in [int(c) for c in args.concurrency.split(",")]:
                r = asyncio.run(load(url, key, singles, clients, args.duration, args.warmup))
                rows.append(record(store, repeat, stack_name, "1 image", clients, r, 1))
            for encoding, bodies, content_type in (
                ("json", json_batches, "application/json"),
                ("npy", npy_batches, npy.MEDIA_TYPE),
            ):
                r = asyncio.run(load(url, key, bodies, 8, args.duration, args.warmup, content_type))
                request = f"{args.batch} images ({encoding})"
                rows.append(record(store, repeat, stack_name, request, 8, r, args.batch))
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def text_load(store: ResultsStore, work: Path, args: argparse.Namespace) -> None:
    """Single sentences to the served text models (see the module docstring)."""
    from modelheist.data import load_dataset
    from modelheist.models.text import TEXT_EPOCHS

    minilm = args.text_victim
    if minilm is None:
        minilm = work / "minilm"
        print("training the text victim (fortunes, MiniLM, the text recipe)...", flush=True)
        run("train", "--dataset", "fortunes", "--arch", "minilm", "--epochs", str(TEXT_EPOCHS),
            "--out", str(minilm))  # fmt: skip
    run("train", "--dataset", "fortunes", "--arch", "vader", "--out", str(work / "vader"))
    victims = {
        "text-minilm": (minilm, []),
        "text-minilm-int8": (minilm, ["--quantize", "int8"]),
        "text-vader": (work / "vader", []),
    }
    quantization_accuracy(minilm)
    texts = load_dataset("fortunes", seed=0).test.x
    rng = np.random.default_rng(0)
    singles = [orjson.dumps({"inputs": [str(texts[i])]}) for i in rng.choice(len(texts), 256)]
    for repeat, (stack_name, (victim, options)) in itertools.product(
        range(args.repeats), victims.items()
    ):
        state = work / f"state-{stack_name}-{repeat}"
        key = run("keys", "add", "bench", "--state", str(state)).strip()
        proc, base = start_server(victim, state, options)
        url = f"{base}/v1/models/victim/predict"
        try:
            for clients in [int(c) for c in args.concurrency.split(",")]:
                r = asyncio.run(load(url, key, singles, clients, args.duration, args.warmup))
                record(store, repeat, stack_name, "1 sentence", clients, r, 1)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def quantization_accuracy(victim: Path) -> None:
    """The int8 copy (``serve --quantize int8``) against the float model on the evaluation
    split of the victim's own data split: each one's accuracy, their agreement and largest
    probability gap (one row)."""
    from modelheist.experiments.targets import victim_split
    from modelheist.models.store import load_model
    from modelheist.models.text import quantize_text_model

    model = load_model(victim)
    quantized = quantize_text_model(model, "int8")  # refuses a model that is not MiniLM
    test = victim_split(model).test
    x, y = test.x, test.y
    float_probs, int8_probs = model.predict_proba(x), quantized.predict_proba(x)
    float_labels, int8_labels = float_probs.argmax(axis=1), int8_probs.argmax(axis=1)
    metrics = {
        "float_accuracy": float((float_labels == y).mean()),
        "int8_accuracy": float((int8_labels == y).mean()),
        "agreement": float((float_labels == int8_labels).mean()),
        "max_probability_gap": float(np.abs(float_probs - int8_probs).max()),
        "evaluation_sentences": len(x),
    }
    store = ResultsStore(ROOT / "results" / "text_quantization.jsonl")
    store.freeze_environment()
    training = model.card.training
    victim_info = {
        "epochs": training.get("epochs"),
        "tuned_layers": training["tuned_layers"],
        "seed": training.get("seed"),
        "weights_sha256": hashlib.sha256((victim / "weights.safetensors").read_bytes()).hexdigest(),
    }
    row = store.append(
        {
            "benchmark": "text_quantization",
            "dataset": model.card.dataset,
            "victim": victim_info,
            "queries_counted": 0,  # the owner measures its own model
            "metrics": metrics,
        }
    )
    print(row["metrics"], flush=True)


if __name__ == "__main__":
    main()
