"""telemetry-core's benchmark suite: ``python -m bench --quick|--full [--only NAME]``.

Each benchmark measures telemetry-core side by side with the libraries an app
would use instead and with the raw limits of the machine, in one run and
interleaved, prints a table of medians and ratios, and writes
``bench/results/<name>.json``. See ``docs/performance.md``.
"""
