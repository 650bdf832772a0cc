"""``batchmaker transform``: offline, file to file; and ``batchmaker bench-transform``.

The flags and the process around a job: the engine (or a client), SIGINT, the progress
bar, the summary and the exit status. The job itself is ``batchmaker.transform``.

Exit status: 0 when every line was answered with outputs; 1 when the job finished but
some lines were answered with an error; 2 when it could not run (a bad flag, a missing
input, an unknown model, an input that changed under ``--resume``); 130 when SIGINT
stopped it (the partial output is kept for ``--resume``).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchmaker.cli import flags

if TYPE_CHECKING:
    from batchmaker.transform.files import FileTask
    from batchmaker.transform.job import FileSummary

EXIT_FAILED_LINES = 1
EXIT_CANNOT_RUN = 2
EXIT_INTERRUPTED = 130


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    from batchmaker.demos import DEMO_REPOSITORY

    p = sub.add_parser(
        "transform",
        parents=[common],
        help="answer every line of files of requests, offline (JSON Lines or text)",
        description="Run every line of INPUT (JSON Lines requests, or plain text for models "
        "with a vocabulary) and write one answer line per input line, in order. In-process on "
        "the engine by default; on a running server with --address. Exit 0: every line "
        "answered; 1: some lines failed (their answers say why); 2: the job could not run; "
        "130: interrupted (resume with --resume). docs/transform.md",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="files, directories of files, or - for stdin (answers then go to stdout)",
    )
    p.add_argument(
        "--output",
        "-o",
        metavar="DIR|FILE",
        help="a file for one input; else a directory, with <input name>.out for each",
    )
    p.add_argument("--model", "-m", required=True, help="the model each line runs on")
    p.add_argument(
        "--format",
        choices=("auto", "jsonl", "text"),
        default="auto",
        help="auto: by suffix (.jsonl/.json/.ndjson, .txt), else by the first line",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="skip inputs already answered and go on from the answers an interrupted run "
        "left in <output>.partial",
    )
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        metavar="N",
        help="lines running at once; default 4 x the model's max batch in-process (capped by "
        "--max-live), 256 against a server",
    )
    p.add_argument(
        "--model-repository",
        default=flags.env_value("MODEL_REPOSITORY", str(DEMO_REPOSITORY)),
        metavar="DIR",
        help="in-process: where the model is read from; default: the demo models; 'none' "
        "for built-in models only [MODEL_REPOSITORY]",
    )
    flags.add_client_flags(p, in_process=True)
    flags.add_engine_flags(p)

    b = sub.add_parser(
        "bench-transform",
        parents=[common],
        help="transform throughput against the engine's saturation and the fused padded "
        "baseline on the same file; peak RSS on a file 10x larger",
        description="docs/benchmarks.md, 'Batch transform (issue 16)'",
    )
    b.add_argument("--lines", type=int, default=10_000, help="lines of the generated file")
    b.add_argument("--runs", type=int, default=3, help="rounds, each measuring every mode")
    b.add_argument(
        "--rss-factor",
        type=int,
        default=10,
        help="peak RSS of transform subprocesses on --lines and this many times more lines "
        "(0: skip)",
    )
    b.add_argument(
        "--rss-model",
        choices=("lstm-lm", "gru-lm", "lstm-512"),
        default="lstm-lm",
        help="the built-in model of the peak-RSS runs (lstm-512 is the benchmark's own, and "
        "slow over a long file)",
    )
    b.add_argument("--tiny", action="store_true", help="a tiny model and short lines (smoke)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--workdir", type=Path, help="where the generated files go (default: temp)")
    b.add_argument("--out", type=Path, default=Path("bench-results/transform.json"))
    flags.add_engine_flags(b, with_mode=False)


def run(args: argparse.Namespace) -> int:
    from batchmaker.transform.files import TransformError, plan

    try:
        tasks = plan(args.inputs, args.output, args.format)
        if args.resume and any(t.target is None for t in tasks):
            raise TransformError("--resume needs files: stdin and stdout cannot be resumed")
        if args.max_in_flight is not None and args.max_in_flight < 1:
            raise TransformError(f"--max-in-flight: must be >= 1, got {args.max_in_flight}")
        import uvloop

        return uvloop.run(_main(args, tasks))
    except TransformError as exc:
        print(f"transform: error: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN


async def _main(args: argparse.Namespace, tasks: list[FileTask]) -> int:
    from batchmaker.errors import BatchMakerError
    from batchmaker.server.records import Window
    from batchmaker.transform.files import TransformError
    from batchmaker.transform.job import ClientRunner, EngineRunner, Runner, run_job

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    main = asyncio.current_task()
    assert main is not None

    def on_sigint() -> None:
        # First: stop reading, answer what runs, keep the partial file. Second: now.
        if stop.is_set():
            main.cancel()
        else:
            print(
                "\ntransform: stopping: answering the lines in flight (Ctrl-C again to drop them)",
                file=sys.stderr,
            )
            stop.set()

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    close: Any = None
    runner: Runner
    try:
        if args.address:
            client = flags.open_async_client(args)
            close = client.close
            runner = ClientRunner(client, args.model)
            window = Window(max_in_flight=args.max_in_flight or 256)
        else:
            engine, manager, in_flight = await _engine(args)
            close = lambda: engine.shutdown(grace=0)  # noqa: E731
            runner = EngineRunner(engine, args.model, manager)
            window = Window(max_in_flight=args.max_in_flight or in_flight)
        summaries = await run_job(
            tasks,
            runner,
            window,
            resume=args.resume,
            stop=stop,
            progress=_progress_bar if sys.stderr.isatty() else None,
            on_file=lambda s: print(f"transform: {s.line()}", file=sys.stderr, flush=True),
        )
    except asyncio.CancelledError:
        print("transform: interrupted; the partial output is kept for --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BatchMakerError as exc:
        raise TransformError(str(exc)) from None
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        if close is not None:
            await close()
    return _exit_status(summaries)


def _exit_status(summaries: list[FileSummary]) -> int:
    if len(summaries) > 1:
        answers = sum(s.num_answers for s in summaries)
        failed = sum(s.num_failed for s in summaries)
        run = sum(s.num_run for s in summaries)
        seconds = sum(s.seconds for s in summaries)
        print(
            f"transform: {len(summaries)} files, {answers} answers, {failed} failed; {run} "
            f"lines in {seconds:.1f} s ({run / seconds if seconds else 0:.1f} lines/s)",
            file=sys.stderr,
        )
    if any(s.interrupted for s in summaries):
        return EXIT_INTERRUPTED
    return EXIT_FAILED_LINES if any(s.num_failed for s in summaries) else 0


async def _engine(args: argparse.Namespace) -> tuple[Any, Any, int]:
    """The in-process engine with ``--model`` loaded, the model manager that loads the
    others records name, and the lines to keep in flight: 4 x the model's largest max
    batch, as the saturation benchmark keeps live."""
    from batchmaker.cli.serve import model_manager
    from batchmaker.runtime.engine import Engine
    from batchmaker.runtime.torch_executor import set_cpu_threads
    from batchmaker.transform.files import TransformError

    config = flags.engine_config(args)
    set_cpu_threads(config)
    repository = None if args.model_repository.lower() == "none" else args.model_repository
    try:
        manager = model_manager(repository, grace_s=0)
        manager.check_names([args.model])
    except ValueError as exc:
        raise TransformError(str(exc)) from None
    models = await asyncio.to_thread(manager.initial_models, [args.model])
    if not models:
        raise TransformError(f"--model {args.model}: could not be loaded (see the log above)")
    engine = await asyncio.to_thread(Engine, config, models)
    await engine.start()
    manager.attach(engine)
    batch = max(engine.max_batch_for(m, c) for m in models for c in m.cells)
    return engine, manager, min(4 * batch, config.live_limit)


def _progress_bar(total: int, initial: int) -> Any:
    """A bar with the rate and the time left (tqdm), on stderr: only when it is a terminal."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="line",
        file=sys.stderr,
        dynamic_ncols=True,
        smoothing=0.05,
    )


def run_bench(args: argparse.Namespace) -> int:
    from batchmaker.bench.transform import run_bench_transform

    return run_bench_transform(args, flags.engine_config(args))
