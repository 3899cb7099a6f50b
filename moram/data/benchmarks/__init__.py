"""The CLIP continual-learning benchmarks: dataset readers, class names and protocols as task sources.

Readers of the eleven datasets in their distributed layouts (:mod:`.registry`), CLIP's class names and
templates (:mod:`.classnames`), the X-TAIL, MTIL and class-incremental CIFAR-100 protocols
(:mod:`.protocols`) and ``moram data prepare`` (:mod:`.prepare`).
"""

from moram.data.benchmarks._common import DatasetCorruptError, DatasetNotFoundError
from moram.data.benchmarks.protocols import (
    MTIL_ORDERS,
    XTAIL_ORDER,
    BenchmarkTasks,
    CIFAR100CILTasks,
    MTILTasks,
    XTailTasks,
)
from moram.data.benchmarks.registry import BENCHMARKS, Benchmark, get_benchmark, load_benchmark

__all__ = [
    "BENCHMARKS",
    "MTIL_ORDERS",
    "XTAIL_ORDER",
    "Benchmark",
    "BenchmarkTasks",
    "CIFAR100CILTasks",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "MTILTasks",
    "XTailTasks",
    "get_benchmark",
    "load_benchmark",
]
