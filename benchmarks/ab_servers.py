"""Plumbing shared by the A/B benchmarks that start `shoal serve` from different source trees
(`frontend_cpu_ab.py`, `overload_tail_ab.py`, `serve_cpu_breakdown.py`): the common options, a
server per tree, the fixed-rate load they offer it, and the CPU a process has used.

A tree is `name=src_dir[+--option+value...][@ENV=VALUE...]`: the source directory put on
PYTHONPATH, extra `shoal serve` options and environment variables for that server only, e.g.
`old=/tmp/old/src,tight=src+--admission-headroom+0.6`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx

from shoal.client.loadgen import LoadGenerator, LoadSpec
from shoal.experiments.server_process import ServerProcess, start_server_process

__all__ = ["ab_parser", "child_pids", "cpu_s", "interleaved", "open_loop_spec", "parse_trees", "serve", "serve_tree", "warm_up", "warmed_up_servers", "write_rows"]


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """The direct children of process `pid` (a server's worker processes), from /proc."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found.extend(int(child) for child in (task / "children").read_text().split())
        except FileNotFoundError:  # the thread ended meanwhile
            pass
    return sorted(found)


def write_rows(out: Path | None, args: argparse.Namespace, rows: list[dict], **extra) -> None:
    """The results file of an A/B script: its options, anything in `extra`, and its rows."""
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": {key: str(value) for key, value in vars(args).items()}, **extra, "rows": rows}, indent=1))


def ab_parser(description: str, *, duration_s: float) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--trees", required=True, help="name=src_dir[+--option+value...][@ENV=VALUE...],name=...")
    parser.add_argument("--rate-rps", type=float, required=True)
    parser.add_argument("--duration-s", type=float, default=duration_s)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repo", type=Path, default=Path(os.environ.get("SHOAL_REPO", Path.home() / ".cache/shoal/repo")))
    parser.add_argument("--model", default="demo.xlarge-128")
    parser.add_argument("--size-px", type=int, default=128)
    parser.add_argument("--layout", default="1x2", help="WORKERSxTHREADS")
    parser.add_argument("--out", type=Path)
    return parser


def parse_trees(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(","))


def interleaved(names: Iterable[str], rounds: int) -> Iterator[tuple[int, str]]:
    """(round, name) for every name in every round, the order reversed every other round (ABBA),
    so that drift in the machine's background load hits every tree alike."""
    ordered = list(names)
    for round_index in range(rounds):
        for name in ordered if round_index % 2 == 0 else ordered[::-1]:
            yield round_index, name


def serve(source: str, repository: Path, model: str, workers: int, threads: int, log: Path,
          extra_args: tuple[str, ...] = (), extra_env: dict[str, str] | None = None) -> ServerProcess:  # fmt: skip
    """`shoal serve` from the tree at `source`, returned once `model` is loaded."""
    server = start_server_process(
        repository, "--workers", str(workers), "--threads", str(threads), "--max-batch-size", "32", "--preload", model, *extra_args,
        log_path=log, env=dict(os.environ, **(extra_env or {}), PYTHONPATH=str(Path(source).resolve())),
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.process.poll() is None:  # ready is not loaded: wait for the model
        if httpx.get(f"{server.url}/v2/models/{model}/ready", timeout=1.0).status_code == 200:
            return server
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"{model} was not loaded within 60 s by the server from {source} (log: {log})")


def serve_tree(tree: str, args: argparse.Namespace, log: Path) -> ServerProcess:
    """`serve` for one tree spec (see the module docstring) with the options of `ab_parser`."""
    source_and_args, *assignments = tree.split("@")
    source, *extra_args = source_and_args.split("+")
    workers, threads = map(int, args.layout.split("x"))
    environment = dict(assignment.split("=", 1) for assignment in assignments)
    return serve(source, args.repo, args.model, workers, threads, log, tuple(extra_args), environment)


def open_loop_spec(url: str, args: argparse.Namespace, seed: int) -> LoadSpec:
    """The open-loop load at `--rate-rps` for `--duration-s` (`ab_parser`'s options and the
    script's `--slo-ms`) on the model's `images` input."""
    return LoadSpec(url=url, model=args.model, input_name="images", input_shape=(1, 3, args.size_px, args.size_px),
                    slo_ms=args.slo_ms, duration_s=args.duration_s, mode="open", rate_rps=args.rate_rps, seed=seed)  # fmt: skip


def warm_up(generator: LoadGenerator, spec: LoadSpec) -> None:
    """2 s at a quarter of the rate, below capacity: the server's models and its learnt batch
    times settle before the measured run."""
    generator.run(dataclasses.replace(spec, duration_s=2.0, rate_rps=spec.rate_rps / 4))


def warmed_up_servers(
    trees: dict[str, str], args: argparse.Namespace, log: Path, generator: LoadGenerator
) -> Iterator[tuple[int, str, ServerProcess, LoadSpec]]:
    """For every round and tree, interleaved: a fresh server from that tree, warmed up, with the
    load to measure it with; each server stops when the loop moves on (or leaves)."""
    for round_index, name in interleaved(trees, args.rounds):
        server = serve_tree(trees[name], args, log)
        try:
            spec = open_loop_spec(server.url, args, round_index)
            warm_up(generator, spec)
            yield round_index, name, server, spec
        finally:
            server.stop()
