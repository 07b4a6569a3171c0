"""Where a job runs: the GPUs it asks for, and how the world's devices hold the model."""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from pruning.errors import UsageError
from pruning.methods.registry import method_class
from pruning.model.checkpoint import CheckpointReader
from pruning.model.loading import resolve_device, resolve_model_dir, resolve_precision
from pruning.runtime.devices import Placement, plan_placement, scoring_bytes
from pruning.runtime.distributed import World
from pruning.spec import PruneSpec

# a weight matrix of a decoder (or encoder) layer: what the quantized precisions store in one byte
LAYER_MATRIX = re.compile(r"\.layers?\.\d+\..*\.weight$")


def job_gpus(spec: PruneSpec) -> int:
    """The GPUs `spec.gpus` asks for (1 where unset: one device, a GPU or the CPU); refuses them for a
    job on the CPU, and more than are visible."""
    if spec.gpus is None:
        return 1
    if resolve_device(spec.device).type != "cuda":
        raise UsageError("gpus asks for GPUs, and this job runs on the CPU: leave gpus unset there")
    visible = torch.cuda.device_count()
    if spec.gpus > visible:
        raise UsageError(f"gpus is {spec.gpus} and {visible} CUDA devices are visible")
    return spec.gpus


def place_model(spec: PruneSpec, world: World) -> Placement:
    """How the world's devices hold the model (`pruning.runtime.devices`): a replica on each rank for a
    method whose scoring splits across replicas (`PruningMethod.replicated_scoring`, bonsai's) when
    every GPU holds one; else rank 0 alone, with the model spread across every rank's GPU,
    or, for another method (a pass or two, nothing to share), on its own. Each rank reports its GPU's
    free memory and all decide alike. Collective."""
    if world.size == 1:
        return Placement()
    shares = method_class(spec.method).replicated_scoring
    if world.device.type != "cuda":  # gloo processes on the CPU: replicas, memory unchecked
        return Placement(replicas=world.size if shares else 1)
    free = world.gather(torch.cuda.mem_get_info(world.device)[0])
    model_dir = resolve_model_dir(spec.model)
    precision = resolve_precision(spec.precision, world.device)
    planned = plan_placement(world.size, scoring_bytes(*checkpoint_param_split(model_dir), precision), free)
    return planned if shares or planned.replicas == 1 else Placement()


def checkpoint_param_split(model_dir: Path) -> tuple[int, int]:
    """(parameters in the layers' weight matrices, all others), from the checkpoint's headers."""
    reader = CheckpointReader(model_dir)
    matrices = others = 0
    for name in reader.weight_map:
        shape, _ = reader.header(name)
        if len(shape) == 2 and LAYER_MATRIX.search(name):
            matrices += math.prod(shape)
        else:
            others += math.prod(shape)
    return matrices, others
