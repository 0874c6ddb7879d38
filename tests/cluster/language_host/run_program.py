"""Runs a Pulumi Python program for the test suite's language host (main.go), inside the project's virtualenv.

    python run_program.py --monitor ADDR --engine ADDR --project P --stack S [--dry_run true] ... ENTRY_POINT

ENTRY_POINT is Pulumi.yaml's `main` relative to the working directory the engine chose ("." for a directory
holding __main__.py). The stack's config arrives in PULUMI_CONFIG / PULUMI_CONFIG_SECRET_KEYS. Exit codes: 0 done,
32 failed after logging why (the engine then shows only that message), 1 failed with a traceback (a bug).
"""

from __future__ import annotations

import argparse
import asyncio
import runpy
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pulumi
import pulumi.runtime
from pulumi.runtime.settings import reset_options

EXIT_AFTER_LOGGED_ERROR = 32


def _arguments() -> tuple[dict[str, Any], str]:
    """The engine's flags, named as pulumi.runtime.settings.reset_options names them, and the entry point."""
    parser = argparse.ArgumentParser()
    for name in ("project", "stack", "root_directory", "organization"):
        parser.add_argument(f"--{name}", default=None)
    parser.add_argument("--monitor", dest="monitor_address")
    parser.add_argument("--engine", dest="engine_address")
    parser.add_argument("--dry_run", dest="preview", type=lambda value: value == "true", default=False)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("entry_point")
    arguments, _unknown = parser.parse_known_args()
    settings = vars(arguments)
    entry_point = settings.pop("entry_point")
    settings["organization"] = settings["organization"] or "organization"  # a file backend has none
    return settings, entry_point


def main() -> int:
    settings, entry_point = _arguments()
    reset_options(**settings)
    pulumi.runtime.set_all_config(pulumi.runtime.get_config_env(), pulumi.runtime.get_config_secret_keys_env())
    parallel: int = settings["parallel"]

    loop = asyncio.new_event_loop()
    # Resource registrations run in executor threads: as many as the engine's parallelism allows.
    loop.set_default_executor(ThreadPoolExecutor(max_workers=max(parallel, 1) * 4))

    def program() -> None:
        # run_path on a directory puts it first on sys.path and runs its __main__.py, as `python DIR` does.
        runpy.run_path(entry_point, run_name="__main__")

    try:
        loop.run_until_complete(pulumi.runtime.run_in_stack(program))
    except pulumi.RunError as error:
        pulumi.log.error(str(error))
        return EXIT_AFTER_LOGGED_ERROR
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            return 0  # the engine has shut down (it stopped the run, e.g. a resource failed): nothing to add
        pulumi.log.error(f"RPC error: {error.details()}")
        return EXIT_AFTER_LOGGED_ERROR
    except Exception:  # anything else is a bug in the program: show where
        print("Program failed with an unhandled exception:\n" + traceback.format_exc(), file=sys.stderr)
        return 1
    finally:
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.close()
        sys.stdout.flush()
        sys.stderr.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
