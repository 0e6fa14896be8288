"""Benchmarks that compare clonebot with what a person would do by hand.

* ``stateless``   — cloning 10 stateless nodes vs. a bash script of ``docker run`` commands;
* ``volume_copy`` — copying a 1 GiB volume: clonebot's pre-copy vs. ``docker run ... cp -a``,
  and clonebot's peak memory growth while it clones;
* ``freeze``      — how long the source is frozen: clonebot's pre-copy + short final pass vs.
  ``docker pause`` for the whole copy, and the longest stall of a process writing in the source;
* ``routing``     — 50 swaps, 50 weight changes and a seamless reload through clonebot's HAProxy
  under 30 s of ``wrk`` load: failed requests, swap latency, HAProxy's added latency.

Run ``python -m bench`` (all) or ``python -m bench stateless`` (one); ``BENCH_RUNS=1`` (or
``--runs 1``) for a quick smoke run. Needs ``DOCKER_HOST`` and the local image
``clonebot-test/busybox:latest`` (``bash scripts/build-test-images.sh``). Every figure is the
median of the runs; clonebot and the baseline are measured in the same run, interleaved.
Results are printed and written to ``bench/results/<name>.json``.
"""
