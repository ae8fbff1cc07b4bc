"""The timing every PyTorch twin in benches/peer/ shares: a median in milliseconds after warm-up,
on the GPU with CUDA events (the kernels' own time, as nabla's criterion benches synchronise) and
on the CPU with the wall clock. The twins import it from their own folder."""
import statistics
import time

import torch


def cuda_median_ms(fn, warmup=5, runs=30):
    """Median over `runs` calls of `fn` after `warmup` calls, each timed by a pair of CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def cpu_median_ms(fn, warmup, runs):
    """Median over `runs` calls of `fn` after `warmup` calls, each timed by the wall clock."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
