"""Cellular-batching scheduler: requests, graphs, ready queues and batching policies.

Pure Python (numpy for index arrays). It must never import torch, grpc or the
serving runtime: it decides *what* runs, the caller runs it. See DESIGN.md.
"""

from scheduler.base import AdmissionError, Scheduler
from scheduler.cellular import CellularScheduler
from scheduler.clock import Clock, ManualClock, MonotonicClock
from scheduler.graph import (
    FEEDBACK_INPUT,
    ZERO_STATE,
    ChainGraph,
    NodeSpec,
    RequestGraph,
    Seq2SeqGraph,
    TreeGraph,
    check_tree,
)
from scheduler.padded import PaddedScheduler
from scheduler.plan import CellTypeSpec, Emission, FinishReason, StepOutcome, StepPlan
from scheduler.policy import PolicyConfig
from scheduler.request import SchedRequest
from scheduler.slots import NUM_RESERVED_SLOTS, SCRATCH_SLOT, ZERO_SLOT, SlotPool

__all__ = [
    "FEEDBACK_INPUT",
    "NUM_RESERVED_SLOTS",
    "SCRATCH_SLOT",
    "ZERO_SLOT",
    "ZERO_STATE",
    "AdmissionError",
    "CellTypeSpec",
    "CellularScheduler",
    "ChainGraph",
    "Clock",
    "Emission",
    "FinishReason",
    "ManualClock",
    "MonotonicClock",
    "NodeSpec",
    "PaddedScheduler",
    "PolicyConfig",
    "RequestGraph",
    "SchedRequest",
    "Scheduler",
    "Seq2SeqGraph",
    "SlotPool",
    "StepOutcome",
    "StepPlan",
    "TreeGraph",
    "check_tree",
]
