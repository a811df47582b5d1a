"""proof.bench_processor's CPU trace: the CPU a worker used while it drained."""

import os

from proof.bench_processor import CpuTrace


def test_the_drain_s_cpu_is_taken_between_the_samples_around_it() -> None:
    trace = CpuTrace(os.getpid())
    trace.stop()
    trace.samples = [(10.0, 1.0, 0.5), (11.0, 1.5, 0.9), (12.0, 2.5, 1.8), (13.0, 2.6, 1.8)]
    # From the last sample at or before the start to the first at or after the end.
    assert trace.between(11.2, 11.9) == (1.0, 0.9)
    assert trace.between(11.0, 12.0) == (1.0, 0.9)
    assert trace.between(9.0, 14.0) == (1.6, 1.3)  # outside the samples: their ends


def test_a_trace_samples_a_live_process_and_its_main_thread() -> None:
    trace = CpuTrace(os.getpid(), every=0.01)
    deadline = os.times().elapsed + 0.2
    while os.times().elapsed < deadline:
        sum(range(10_000))  # some CPU in this, the main, thread
    trace.stop()
    process, main = trace.between(trace.samples[0][0], trace.samples[-1][0])
    assert main > 0.05
    # The process's and the thread's CPU come from two /proc files read one after the
    # other, each in clock ticks, and the kernel splits a thread's time into user and
    # system on its own: at each end of the span they may disagree by a tick or so.
    tick = 1 / os.sysconf("SC_CLK_TCK")
    assert process >= main - 2 * tick
