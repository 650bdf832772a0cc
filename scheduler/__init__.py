"""Cellular-batching scheduler: requests, graphs, ready queues and batching policies.

Pure Python (numpy for index arrays). It must never import torch, grpc or the
serving runtime: it decides *what* runs, the caller runs it. See docs/architecture.md.
"""

from scheduler.base import AdmissionError, Scheduler
from scheduler.cellular import CellularScheduler, PlanArrivals
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
from scheduler.modes import (
    LIVE_PER_BATCH,
    MODES,
    Mode,
    SchedulerConfig,
    default_live_limit,
    make_scheduler,
)
from scheduler.padded import PaddedScheduler
from scheduler.plan import CellTypeSpec, Emission, EmissionBlock, StepOutcome, StepPlan
from scheduler.policy import PolicyConfig
from scheduler.request import FinishReason, SchedRequest
from scheduler.slo import SloConfig, SloController, SloDecision
from scheduler.slots import NUM_RESERVED_SLOTS, SCRATCH_SLOT, ZERO_SLOT, SlotPool

__all__ = [
    "FEEDBACK_INPUT",
    "LIVE_PER_BATCH",
    "MODES",
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
    "EmissionBlock",
    "FinishReason",
    "ManualClock",
    "Mode",
    "MonotonicClock",
    "NodeSpec",
    "PaddedScheduler",
    "PlanArrivals",
    "PolicyConfig",
    "RequestGraph",
    "SchedRequest",
    "Scheduler",
    "SchedulerConfig",
    "Seq2SeqGraph",
    "SloConfig",
    "SloController",
    "SloDecision",
    "SlotPool",
    "StepOutcome",
    "StepPlan",
    "TreeGraph",
    "check_tree",
    "default_live_limit",
    "make_scheduler",
]
